"""Local error signals (predsim): the sim loss against a hand computation, the locality of the
pred update, the layer-by-layer schedule against a summed-loss backward, and the CNN path."""

from __future__ import annotations

import copy
import math
import statistics
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from bpfree.models import create_model
from bpfree.rules import Batch, create_rule
from bpfree.rules.predsim import pool_plan, sim_loss, similarity_matrix
from bpfree.testing.conformance import RuleCase
from test_memory_faithful import _activations

SGD = {"optimizer": "sgd", "momentum": 0.0, "lr": 0.1, "weight_decay": 0.0}


def _hand_similarity(rows: list[list[float]]) -> list[list[float]]:
    """Cosine similarity of each pair of rows, each row centred over its own entries (with the
    card's 1e-8 added to each norm)."""
    centred = [[v - sum(r) / len(r) for v in r] for r in rows]
    norms = [math.sqrt(sum(v * v for v in r)) + 1e-8 for r in centred]
    return [
        [
            sum(a * b for a, b in zip(ri, rj, strict=True)) / (ni * nj)
            for rj, nj in zip(centred, norms, strict=True)
        ]
        for ri, ni in zip(centred, norms, strict=True)
    ]


def _hand_sim_loss(rows: list[list[float]], labels: list[int], num_classes: int) -> float:
    """MSE between the similarities of the rows and of the one-hot labels."""
    r = _hand_similarity(rows)
    onehot = [[float(c == label) for c in range(num_classes)] for label in labels]
    target = _hand_similarity(onehot)
    n = len(rows)
    return sum((r[i][j] - target[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2


def test_sim_loss_of_a_hand_made_batch_equals_a_float64_hand_computation() -> None:
    rows = [[1.0, 2.0, 3.0], [3.0, 1.0, 0.0], [0.0, 0.5, 1.0], [2.0, 2.0, 5.0]]
    labels = [0, 1, 0, 2]
    x, y = torch.tensor(rows, dtype=torch.float64), torch.tensor(labels)
    torch.testing.assert_close(
        similarity_matrix(x),
        torch.tensor(_hand_similarity(rows), dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )
    onehot = F.one_hot(y, 3).double()
    want_labels = torch.tensor(
        [[1.0 if a == b else -0.5 for b in labels] for a in labels], dtype=torch.float64
    )
    # centred one-hots: 1 within a class, -1/(C-1) across (up to the 1e-8 in the norms)
    torch.testing.assert_close(similarity_matrix(onehot), want_labels, atol=1e-7, rtol=0)
    got = sim_loss(x, y, 3)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_hand_sim_loss(rows, labels, 3), abs=1e-12)
    assert got.item() > 0.05  # a batch whose similarities are far from the labels'


def test_sim_loss_of_feature_maps_uses_the_per_channel_std_over_space() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)  # c = 4 > 3, h = 2 > 1
    rows = [[statistics.stdev(maps[b, c].flatten().tolist()) for c in range(4)] for b in range(3)]
    labels = [1, 1, 4]
    got = sim_loss(maps, torch.tensor(labels), 5).item()
    assert got == pytest.approx(_hand_sim_loss(rows, labels, 5), abs=1e-12)
    few_channels = maps[:, :3]  # c = 3: flattened, as the paper's code does
    flat = few_channels.flatten(1).tolist()
    got = sim_loss(few_channels, torch.tensor(labels), 5).item()
    assert got == pytest.approx(_hand_sim_loss(flat, labels, 5), abs=1e-12)


def test_a_blocks_predsim_loss_equals_its_formula_in_float64() -> None:
    case = RuleCase("predsim", "mlp_2x8")
    rule = case.make()
    rule.modules.double()
    with torch.no_grad():  # D_0 starts at zero: give it values so pred is not log(C) alone
        rule.heads[0]["decoder"].weight.normal_(generator=torch.Generator().manual_seed(1))
    batch = case.batch(0, size=12)
    x, y = batch.x.double(), batch.y
    a = rule.model.blocks[0](x)  # (12, 8)
    got = rule.local_loss(0, a, y).item()
    s = rule.heads[0]["sim"].weight.detach()  # S_0 (8, 8)
    dec = rule.heads[0]["decoder"]
    logits = (a @ dec.weight.T + dec.bias).detach()
    pred = -(logits.log_softmax(dim=1)[torch.arange(12), y]).mean().item()
    sim = _hand_sim_loss((a.detach() @ s.T).tolist(), y.tolist(), 10)
    assert got == pytest.approx(0.01 * pred + 0.99 * sim, abs=1e-12)


def _randomise_decoders(rule: Any, seed: int) -> None:
    """D_k starts at zero, which would make block k's first pred gradient zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for heads in rule.heads:
            heads["decoder"].weight.normal_(generator=g)


def test_pred_update_of_block_0_is_the_gradient_of_its_own_local_loss_only() -> None:
    case = RuleCase("predsim", "mlp_2x16", {**SGD, "loss": "pred"})
    rule, perturbed = case.make(), case.make()
    for r in (rule, perturbed):
        _randomise_decoders(r, 5)
    with torch.no_grad():  # a different block 1 and D_1: block 0's update must not notice
        for p in [*perturbed.model.blocks[1].parameters(), *perturbed.heads[1].parameters()]:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(9)))
    batch = case.batch(0, size=24)
    block, decoder = copy.deepcopy(rule.model.blocks[0]), copy.deepcopy(rule.heads[0]["decoder"])
    params = [*block.parameters(), *decoder.parameters()]
    local = F.cross_entropy(decoder(block(batch.x)), batch.y)
    grads = torch.autograd.grad(local, params)
    want = [(p - 0.1 * g).detach() for p, g in zip(params, grads, strict=True)]
    assert all(g.abs().max() > 1e-4 for g in grads)  # a real update, not a zero one

    for r in (rule, perturbed):
        r.train()
        r.train_step(batch)
    got = [*rule.model.blocks[0].parameters(), *rule.heads[0]["decoder"].parameters()]
    for p, w in zip(got, want, strict=True):
        torch.testing.assert_close(p.detach(), w, atol=1e-6, rtol=1e-5)
    other = [*perturbed.model.blocks[0].parameters(), *perturbed.heads[0]["decoder"].parameters()]
    assert all(torch.equal(a, b) for a, b in zip(got, other, strict=True))
    # Backprop through the stack would have given block 0 a share of block 1's loss:
    fresh = case.make()
    _randomise_decoders(fresh, 5)
    a0 = fresh.model.blocks[0](batch.x)
    upper = F.cross_entropy(fresh.heads[1]["decoder"](fresh.model.blocks[1](a0)), batch.y)
    leak = torch.autograd.grad(upper, fresh.model.blocks[0].linear.weight)[0]
    assert leak.abs().max() > 1e-4


def _summed(rule: Any, batch: Batch) -> None:
    """The same losses as one summed backward: every block's graph alive at once."""
    for opt in rule.optimizers().values():
        opt.zero_grad(set_to_none=True)
    h, total = batch.x, torch.zeros(())
    for k, block in enumerate(rule.model.blocks):
        a = block(h.detach())
        total = total + rule.local_loss(k, a, batch.y)
        h = a
    total = total + rule.output_loss(h, batch.y)
    total.backward()
    for opt in rule.optimizers().values():
        opt.step()


@pytest.mark.parametrize(
    ("model", "hparams"),
    [
        ("mlp_3x24", {}),
        ("mlp_3x24", {"loss": "pred"}),
        ("mlp_3x24", {"loss": "sim"}),
        ("cnn_3block", {"dim_in_decoder": 128}),
    ],
)
def test_layer_by_layer_equals_the_summed_loss_update(model: str, hparams: dict[str, Any]) -> None:
    case = RuleCase("predsim", model, hparams)
    faithful, reference = case.make(seed=3), case.make(seed=3)
    for r in (faithful, reference):
        r.train()
        r.start_phase(r.phases()[0], case.data.train_x, case.data.train_y)
    for step in range(4):
        faithful.train_step(case.batch(step))
        _summed(reference, case.batch(step))
    want = dict(reference.modules.named_parameters())
    for name, p in faithful.modules.named_parameters():
        torch.testing.assert_close(p, want[name], atol=1e-6, rtol=0, msg=name)


def test_each_blocks_backward_runs_before_the_next_block_runs() -> None:
    case = RuleCase("predsim", "mlp_3x16")
    rule = case.make()
    events: list[str] = []
    handles = []
    for k, block in enumerate(rule.model.blocks):
        handles.append(
            block.register_forward_pre_hook(lambda *_, k=k: events.append(f"forward{k}"))
        )
        handles.append(
            block.linear.weight.register_hook(lambda g, k=k: events.append(f"backward{k}"))
        )
    rule.train()
    rule.train_step(case.batch(0))
    for h in handles:
        h.remove()
    assert events == ["forward0", "backward0", "forward1", "backward1", "forward2", "backward2"]


def test_activation_memory_does_not_grow_with_depth() -> None:
    """Probe bytes at width 64, batch 512 (deterministic): from 2 to 8 blocks they stay flat
    (one block's graph at a time; its B x B similarity matrices dominate at any depth)."""
    assert _activations("predsim", 8) < 1.05 * _activations("predsim", 2)


def test_one_step_on_cnn_3block_pools_for_the_decoder_and_changes_every_parameter() -> None:
    case = RuleCase("predsim", "cnn_3block", {"dim_in_decoder": 128})
    rule = case.make()  # digits: block outputs 32x4x4, 128x2x2, 512x1x1
    assert [h["decoder"].in_features for h in rule.heads] == [128, 128, 512]
    assert [p.kernel if p else None for p in rule.pools] == [(2, 2), (2, 2), None]
    before = {k: v.detach().clone() for k, v in rule.modules.named_parameters()}
    rule.train()
    loss = rule.train_step(case.batch(0))
    assert loss.dim() == 0 and not loss.requires_grad and torch.isfinite(loss)
    unchanged = [k for k, v in rule.modules.named_parameters() if torch.equal(v, before[k])]
    assert not unchanged, unchanged


def test_cnn_3block_on_28x28_images_pools_with_padding_as_the_paper_code_does() -> None:
    rule = create_rule("predsim")  # the default dim_in_decoder, 2048
    model = create_model("cnn_3block", (1, 28, 28))  # 32x14x14, 128x7x7, 512x3x3
    rule.setup(model, 10, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert [h["decoder"].in_features for h in rule.heads] == [1568, 2048, 2048]
    assert pool_plan(128, 7, 2048).padding == (1, 1)  # 7 rows -> 4 pooled rows, one padded
    g = torch.Generator().manual_seed(2)
    batch = Batch(torch.randn(16, 1, 28, 28, generator=g), torch.arange(16) % 10, torch.arange(16))
    rule.train()
    assert torch.isfinite(rule.train_step(batch))
    rule.eval()
    with torch.no_grad():
        assert rule.predict(batch.x).shape == (16, 10)


def test_optimizers_are_one_per_block_and_one_for_the_output_layer() -> None:
    rule = RuleCase("predsim", "mlp_3x16").make()
    opts = rule.optimizers()
    assert list(opts) == ["block0", "block1", "block2", "out"]
    owned = [id(p) for o in opts.values() for g in o.param_groups for p in g["params"]]
    assert sorted(owned) == sorted(id(p) for p in rule.modules.parameters())  # each once
    assert all(o.param_groups[0]["lr"] == 5e-4 for o in opts.values())
    assert torch.equal(rule.out.weight, torch.zeros_like(rule.out.weight))
    assert all(
        torch.equal(h["decoder"].weight, torch.zeros_like(h["decoder"].weight)) for h in rule.heads
    )
