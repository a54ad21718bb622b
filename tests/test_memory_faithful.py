"""Memory-faithful local rules: each layer's graph is freed before the next layer runs, with the
update a summed-loss backward would give; and what that does to activation memory."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from bpfree.config import TrainConfig
from bpfree.engine import build_rule
from bpfree.meters.probe import probe_phase
from bpfree.rules import Batch
from bpfree.rules.forward_forward import embed_label
from bpfree.testing.conformance import RuleCase, tiny_data


def _mf_summed(rule: Any, batch: Batch) -> None:
    """Mono-Forward as one summed backward: every layer's graph alive at once."""
    rule.opt.zero_grad(set_to_none=True)
    h, total = batch.x, torch.zeros(())
    for block, proj in zip(rule.model.blocks, rule.projections, strict=True):
        a = block(h.detach())
        total = total + F.cross_entropy(proj(a), batch.y)
        h = a
    total.backward()
    rule.opt.step()


def _ff_summed(rule: Any, batch: Batch) -> None:
    """Forward-Forward (simultaneous, goodness) as one summed backward."""
    x, y, c = batch.x.flatten(1), batch.y, rule.num_classes
    n = x.shape[0]
    rule.opt.zero_grad(set_to_none=True)
    pos = embed_label(x, y, c, rule.hp.label_scale)
    neg = embed_label(x, rule.negative_labels(y), c, rule.hp.label_scale)
    h = torch.cat([pos, neg])
    target = torch.cat([x.new_ones(n), x.new_zeros(n)])
    total = torch.zeros(())
    for k in range(len(rule.model.blocks)):
        a = rule._layer(k, h)
        goodness = a.pow(2).sum(dim=1)
        total = total + F.binary_cross_entropy_with_logits(goodness - rule.thresholds[k], target)
        h = a
    total.backward()
    rule.opt.step()


def _same_after_steps(rule: str, summed: Any, steps: int = 5) -> None:
    case = RuleCase(rule, "mlp_3x24")
    faithful, reference = case.make(seed=3), case.make(seed=3)
    for r in (faithful, reference):
        r.train()
        r.start_phase(r.phases()[0], case.data.train_x, case.data.train_y)
    for step in range(steps):
        faithful.train_step(case.batch(step))
        summed(reference, case.batch(step))
    want = dict(reference.modules.named_parameters())
    for name, p in faithful.modules.named_parameters():
        torch.testing.assert_close(p, want[name], atol=1e-6, rtol=0, msg=name)


def test_mf_layer_by_layer_equals_the_summed_loss_update() -> None:
    _same_after_steps("mf", _mf_summed)


def test_ff_layer_by_layer_equals_the_summed_loss_update() -> None:
    _same_after_steps("ff", _ff_summed)


def _activations(rule: str, depth: int) -> int:
    """Activation bytes of a steady probe step at width 64, batch 512: a regime
    where activations, not parameters, dominate (as at the real sizes of memory_scaling.py)."""
    config = TrainConfig.build(
        {
            "rule": rule,
            "model": f"mlp_{depth}x64",
            "dataset": "digits",
            "device": "cpu",
            "train_samples": 600,
            "hparams": {"batch_size": 512},
        }
    )
    data = tiny_data("digits", 600)
    built = build_rule(config, data)
    probe = probe_phase(built, data, torch.device("cpu"), built.phases()[0])
    assert not isinstance(probe, str), probe
    return probe.activation_bytes


def test_activation_memory_of_local_rules_does_not_grow_with_depth() -> None:
    """Tensor bytes (not timings): deterministic. From 2 to 8 hidden layers, backprop's
    activation memory grows with depth; a memory-faithful layer-local rule's stays flat, and
    DFA, which keeps masks and frees each activation once used, stays within 10% of BP."""
    act = {(r, d): _activations(r, d) for r in ("bp", "mf", "ff", "dfa", "fa") for d in (2, 8)}
    growth = {r: act[r, 8] / act[r, 2] for r in ("bp", "mf", "ff", "dfa", "fa")}
    assert growth["bp"] > 1.8, growth
    assert growth["mf"] < 1.3 and growth["ff"] < 1.3, growth
    assert act["dfa", 8] <= 1.1 * act["bp", 8] and act["fa", 8] <= 1.1 * act["bp", 8], act
