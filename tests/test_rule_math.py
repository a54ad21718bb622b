"""Each rule's update against a hand-computed case."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bpfree.rules import Batch, Phase
from bpfree.rules.forward_forward import embed_label, rms_normalize
from bpfree.rules.toolkit import sparsemax, sparsemax_loss
from bpfree.testing.conformance import RuleCase


def _batch(case: RuleCase, n: int = 16) -> Batch:
    return case.batch(0, size=n)


# ---- DFA ------------------------------------------------------------------------------------
def test_dfa_update_of_a_two_layer_net_equals_its_formula() -> None:
    case = RuleCase("dfa", "mlp_1x5", {"optimizer": "sgd", "momentum": 0.0, "lr": 0.5})
    rule = case.make()
    batch = _batch(case)
    w1 = rule.model.blocks[0].linear.weight.detach().double().clone()  # (5, 64)
    b1 = rule.model.blocks[0].linear.bias.detach().double().clone()
    wo, bo = rule.head.weight.detach().double().clone(), rule.head.bias.detach().double().clone()
    fb = rule.feedback[0].double()  # (C, 5)
    x, y = batch.x.flatten(1).double(), batch.y
    n = x.shape[0]

    z1 = x @ w1.T + b1
    a1 = z1.clamp_min(0)
    e = torch.softmax(a1 @ wo.T + bo, dim=1) - F.one_hot(y, 10).double()
    d_wo, d_bo = e.T @ a1 / n, e.mean(0)
    delta = (e @ fb) * (z1 > 0)
    d_w1, d_b1 = delta.T @ x / n, delta.mean(0)

    rule.train()
    rule.train_step(batch)
    for got, before, grad in (
        (rule.model.blocks[0].linear.weight, w1, d_w1),
        (rule.model.blocks[0].linear.bias, b1, d_b1),
        (rule.head.weight, wo, d_wo),
        (rule.head.bias, bo, d_bo),
    ):
        torch.testing.assert_close(got.detach().double(), before - 0.5 * grad, atol=1e-5, rtol=1e-5)
    # The hidden update is DFA's, not backprop's (which would use wo^T instead of fb).
    bp_delta = (e @ wo) * (z1 > 0)
    assert not torch.allclose(delta.T @ x / n, bp_delta.T @ x / n, atol=1e-6)


def test_dfa_feedback_is_fixed_and_checkpointed() -> None:
    rule = RuleCase("dfa", "mlp_2x8").make()
    before = rule.feedback[1].clone()
    rule.train_step(_batch(RuleCase("dfa", "mlp_2x8")))
    assert torch.equal(rule.feedback[1], before)
    assert "feedback.b1" in rule.modules.state_dict()
    assert rule.feedback[1].shape == (10, 8)


# ---- sparsemax ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("z", "want"),
    [
        ([0.5, 0.2, -0.1], [0.6 + 1 / 30, 1 / 3, 1 / 30]),  # tau = -2/15, full support
        ([3.0, 1.0, 0.0], [1.0, 0.0, 0.0]),  # tau = 2: one-hot
        ([1.0, 1.0, -5.0], [0.5, 0.5, 0.0]),
        ([0.0, 0.0, 0.0, 0.0], [0.25] * 4),  # equal scores: uniform, as softmax
    ],
)
def test_sparsemax_of_known_vectors(z: list[float], want: list[float]) -> None:
    got = sparsemax(torch.tensor([z], dtype=torch.float64))[0]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def test_sparsemax_loss_value_and_gradient() -> None:
    z = torch.tensor([[3.0, 1.0, 0.0], [0.5, 0.2, -0.1]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2])
    loss = sparsemax_loss(z, y)
    # Row 0: -3 + (9 - 4)/2 + 1/2 = 0 (separated with margin). Row 1: tau = -2/15,
    # -(-0.1) + 0.5 * (0.25 + 0.04 + 0.01 - 3 * (2/15)^2) + 0.5.
    row1 = 0.1 + 0.5 * (0.30 - 3 * (2 / 15) ** 2) + 0.5
    torch.testing.assert_close(loss, torch.tensor((0.0 + row1) / 2, dtype=torch.float64))
    loss.backward()
    want = (sparsemax(z.detach()) - F.one_hot(y, 3).double()) / 2
    torch.testing.assert_close(z.grad, want)


# ---- Forward-Forward ------------------------------------------------------------------------
def test_ff_loss_of_one_layer_equals_hand_computation() -> None:
    case = RuleCase("ff", "mlp_1x3", {"threshold": 0.7, "label_scale": 2.0})
    rule = case.make()
    batch = _batch(case, 4)
    neg = (batch.y + 3) % 10
    rule.negative_labels = lambda y: neg  # fix the random wrong labels
    w, b = rule.model.blocks[0].linear.weight.detach(), rule.model.blocks[0].linear.bias.detach()
    x = batch.x.flatten(1)

    def goodness(labels: torch.Tensor) -> torch.Tensor:
        inp = x.clone()
        inp[:, :10] = 0
        inp[torch.arange(4), labels] = 2.0  # label_scale
        inp = inp / (inp.pow(2).mean(1, keepdim=True).sqrt() + 1e-8)
        return (inp @ w.T + b).clamp_min(0).pow(2).sum(1)

    theta = 0.7 * 3
    logits = torch.cat([goodness(batch.y), goodness(neg)]) - theta
    target = torch.cat([torch.ones(4), torch.zeros(4)])
    want = F.binary_cross_entropy_with_logits(logits, target)
    got = rule.train_step(batch)
    torch.testing.assert_close(got, want)


def test_ff_threshold_setting_is_used() -> None:
    losses = []
    for threshold in (0.5, 2.0):
        case = RuleCase("ff", "mlp_2x16", {"threshold": threshold})
        losses.append(case.make().train_step(_batch(case)))
    assert not torch.allclose(losses[0], losses[1])


def test_ff_negative_labels_are_uniform_wrong_labels() -> None:
    rule = RuleCase("ff", "mlp_1x4").make()
    y = torch.arange(10).repeat(3000)  # (30000,)
    neg = rule.negative_labels(y)
    assert not (neg == y).any()
    counts = torch.zeros(10, 10)
    counts.index_put_((y, neg), torch.ones(y.shape[0]), accumulate=True)
    off = counts[~torch.eye(10, dtype=torch.bool)]  # 90 cells, expected 3000/9 each
    assert off.min() > 3000 / 9 * 0.75 and off.max() < 3000 / 9 * 1.25


def test_ff_label_embedding_and_normalisation() -> None:
    x = torch.randn(2, 20)
    out = embed_label(x, torch.tensor([3, 0]), 10, 1.5)
    assert torch.equal(out[:, 10:], x[:, 10:])
    assert out[0, :10].tolist() == [0, 0, 0, 1.5, 0, 0, 0, 0, 0, 0]
    neutral = embed_label(x, None, 10, 1.5)
    torch.testing.assert_close(neutral[:, :10], torch.full((2, 10), 0.15))
    n = rms_normalize(x)
    torch.testing.assert_close(n.pow(2).mean(1), torch.ones(2), atol=1e-5, rtol=1e-5)


def test_ff_prediction_accumulates_goodness_over_layers_two_to_l() -> None:
    case = RuleCase("ff", "mlp_3x6")
    rule = case.make()
    rule.eval()
    x = case.data.val_x[:2].flatten(1)
    want = torch.zeros(2, 10)
    for c in range(10):
        h = embed_label(x, torch.full((2,), c), 10, 1.0)
        for k, block in enumerate(rule.model.blocks):
            h = block(rms_normalize(h))
            if k >= 1:  # the first layer is not counted
                want[:, c] += h.pow(2).sum(1) - 6.0
    with torch.no_grad():
        torch.testing.assert_close(rule.predict(x), want.detach())


@pytest.mark.parametrize("rule", ["ff", "bp", "fa"])
def test_lr_cooldown_is_linear_over_the_second_half_of_the_phase(rule: str) -> None:
    """A setting every rule shares, applied by the framework to the rule's optimizers."""
    case = RuleCase(rule, "mlp_2x16", {"lr": 0.01, "batch_size": 4, "lr_cooldown": True})
    r = case.make()
    r.train()
    train_x = case.data.train_x[:16]  # 4 steps per epoch; a 2-epoch phase has T = 8 steps
    r.start_phase(Phase("train", 0, 2), train_x, case.data.train_y[:16])
    lrs = []
    for i in range(8):
        r.train_step(case.batch(i, size=4))
        lrs.append(r.opt.param_groups[0]["lr"])
    want = [0.01] * 5 + [0.01 * 2 * k / 8 for k in (3, 2, 1)]
    assert lrs == pytest.approx(want)
    constant = RuleCase(rule, "mlp_2x16", {"lr": 0.01, "batch_size": 4}).make()
    constant.start_phase(Phase("train", 0, 2), train_x, case.data.train_y[:16])
    for i in range(8):
        constant.train_step(case.batch(i, size=4))
    assert constant.opt.param_groups[0]["lr"] == 0.01


# ---- CaFo -----------------------------------------------------------------------------------
def _cafo(loss: str = "ce") -> tuple[RuleCase, object]:
    case = RuleCase("cafo", "cnn_3block", {"predictor_loss": loss})
    rule = case.make()
    rule.train()
    rule.start_phase(rule.phases()[0], case.data.train_x, case.data.train_y)
    return case, rule


def test_cafo_batchnorm_statistics_come_from_the_training_data() -> None:
    case, rule = _cafo()
    block = rule.model.blocks[0]
    with torch.no_grad():
        u = block.pool(torch.relu(block.conv(case.data.train_x)))  # (N, 32, 4, 4)
    torch.testing.assert_close(block.norm.running_mean, u.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(block.norm.running_var, u.var(dim=(0, 2, 3)), atol=1e-5, rtol=1e-4)
    # The cache holds the frozen cascade's eval-mode features of the training set.
    rule.eval()
    with torch.no_grad():
        h = case.data.train_x
        for k, blk in enumerate(rule.model.blocks):
            h = blk(h)
            torch.testing.assert_close(rule.cache[k], h.flatten(1), atol=1e-4, rtol=1e-4)


def test_cafo_mse_predictor_is_the_ridge_solution() -> None:
    case, rule = _cafo("mse")
    rule.train_step(_batch(case))  # the first step solves
    h = rule.cache[2].double()  # (N, 512)
    h1 = torch.cat([h, torch.ones(h.shape[0], 1, dtype=torch.float64)], dim=1)
    y = F.one_hot(case.data.train_y, 10).double()
    sol = torch.linalg.solve(
        h1.T @ h1 + 1.0 * torch.eye(h1.shape[1], dtype=torch.float64), h1.T @ y
    )
    torch.testing.assert_close(rule.predictors[2].weight.double(), sol[:-1].T, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(rule.predictors[2].bias.double(), sol[-1], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("loss", ["ce", "sl"])
def test_cafo_prediction_sums_per_block_probabilities(loss: str) -> None:
    case, rule = _cafo(loss)
    rule.eval()
    x = case.data.val_x[:3]
    squash = sparsemax if loss == "sl" else lambda z: torch.softmax(z, dim=1)
    with torch.no_grad():
        total, h = torch.zeros(3, 10), x
        for blk, pred in zip(rule.model.blocks, rule.predictors, strict=True):
            h = blk(h)
            total += squash(pred(h.flatten(1)))
        got = rule.predict(x)
    torch.testing.assert_close(got.exp() * 3, total.clamp_min(3e-12), atol=1e-6, rtol=1e-5)


def test_cafo_dfa_pretraining_sends_each_block_its_projected_error() -> None:
    case = RuleCase("cafo", "cnn_3block", {"blocks": "dfa", "optimizer": "sgd"})
    rule = case.make()
    rule.train()
    rule.start_phase(Phase("dfa_pretrain"), case.data.train_x, case.data.train_y)
    assert [p.name for p in rule.phases()] == ["dfa_pretrain", "predictors"]
    batch = _batch(case, 8)
    captured = {}
    real_step = rule.opt.step

    def step() -> None:  # look at the gradients the rule hands to the optimizer
        captured.update(
            {n: p.grad.clone() for n, p in rule.modules.named_parameters() if p.grad is not None}
        )
        real_step()

    rule.opt.step = step
    # Hand computation for the last block: it receives e F_3 / B at its output.
    with torch.no_grad():
        h = batch.x
        for blk in rule.model.blocks[:2]:
            h = blk(h)
    top_in = h.detach()
    last = rule.model.blocks[2]
    out = last(top_in)
    with torch.no_grad():
        logits = rule.aux(out.detach().flatten(1))
        e = torch.softmax(logits, 1) - F.one_hot(batch.y, 10).float()
    want = torch.autograd.grad(out, last.conv.weight, (e @ rule.feedback[2]).view_as(out) / 8)[0]
    rule.train_step(batch)
    torch.testing.assert_close(captured["model.blocks.2.conv.weight"], want, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(captured["aux.weight"], e.T @ out.detach().flatten(1) / 8)


# ---- Mono-Forward and backprop --------------------------------------------------------------
def test_mf_layer_update_uses_only_its_own_loss() -> None:
    # SGD's first step is a plain gradient step whatever its momentum.
    case = RuleCase("mf", "mlp_2x8", {"optimizer": "sgd", "lr": 0.1})
    rule = case.make()
    batch = _batch(case)
    w1 = rule.model.blocks[0].linear.weight.detach().clone().requires_grad_(True)
    b1 = rule.model.blocks[0].linear.bias.detach().clone()
    m1 = rule.projections[0].weight.detach().clone()
    a1 = torch.relu(batch.x.flatten(1) @ w1.T + b1)
    local = F.cross_entropy(a1 @ m1.T, batch.y)
    (grad,) = torch.autograd.grad(local, w1)
    rule.train_step(batch)
    torch.testing.assert_close(rule.model.blocks[0].linear.weight, w1.detach() - 0.1 * grad)


def test_bp_cnn_predicts_with_batchnorm_in_eval_mode() -> None:
    case = RuleCase("bp", "cnn_3block")
    rule = case.make()
    for step in range(3):
        rule.train_step(case.batch(step))
    rule.eval()
    assert not any(m.training for m in rule.modules.modules())
    x = case.data.val_x[:5]
    with torch.no_grad():
        torch.testing.assert_close(rule.predict(x)[:1], rule.predict(x[:1]))
        assert math.isfinite(float(rule.predict(x).sum()))
