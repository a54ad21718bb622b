"""Feedback Alignment: its update against backprop's and against the formula of its card."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bpfree.testing.conformance import RuleCase

SGD = {"optimizer": "sgd", "momentum": 0.0, "lr": 0.1, "weight_decay": 0.0}


def test_with_transposed_weights_as_feedback_one_fa_step_is_one_backprop_step() -> None:
    fa, bp = RuleCase("fa", "mlp_3x16", SGD).make(), RuleCase("bp", "mlp_3x16", SGD).make()
    assert all(
        torch.equal(a, b)
        for a, b in zip(fa.model.state_dict().values(), bp.model.state_dict().values(), strict=True)
    )
    assert torch.equal(fa.head.weight, bp.head.weight)  # same body and head at the same seed
    blocks = fa.model.blocks
    above = [*(b.linear.weight for b in blocks[1:]), fa.head.weight]  # W_{l+1} (d_{l+1}, d_l)
    for k, w in enumerate(above):
        assert fa.feedback[k].shape == w.t().shape  # the transposed shape of W_{l+1}
        fa.feedback[k].copy_(w.detach().t())
    batch = RuleCase("fa", "mlp_3x16").batch(0, size=32)
    fa.train()
    bp.train()
    loss_fa, loss_bp = fa.train_step(batch), bp.train_step(batch)
    torch.testing.assert_close(loss_fa, loss_bp)
    want = dict(bp.modules.named_parameters())
    for name, p in fa.modules.named_parameters():
        torch.testing.assert_close(p, want[name], atol=1e-6, rtol=1e-5, msg=name)


def test_fa_update_of_a_two_hidden_layer_net_equals_its_formula() -> None:
    case = RuleCase("fa", "mlp_2x6", {**SGD, "lr": 0.5})
    rule = case.make()
    batch = case.batch(0, size=16)
    l1, l2 = rule.model.blocks[0].linear, rule.model.blocks[1].linear
    w1, b1 = l1.weight.detach().double().clone(), l1.bias.detach().double().clone()
    w2, b2 = l2.weight.detach().double().clone(), l2.bias.detach().double().clone()
    wo, bo = rule.head.weight.detach().double().clone(), rule.head.bias.detach().double().clone()
    f2, fo = rule.feedback[0].double(), rule.feedback[1].double()  # (6, 6), (6, C)
    x, y = batch.x.flatten(1).double(), batch.y
    n = x.shape[0]

    z1 = x @ w1.T + b1
    a1 = z1.clamp_min(0)
    z2 = a1 @ w2.T + b2
    a2 = z2.clamp_min(0)
    e = torch.softmax(a2 @ wo.T + bo, dim=1) - F.one_hot(y, 10).double()
    d2 = (e @ fo.T) * (z2 > 0)  # through B_out, not W_out^T
    d1 = (d2 @ f2.T) * (z1 > 0)  # through B_2, not W_2^T
    rule.train()
    rule.train_step(batch)
    for got, before, grad in (
        (l1.weight, w1, d1.T @ x / n),
        (l1.bias, b1, d1.mean(0)),
        (l2.weight, w2, d2.T @ a1 / n),
        (l2.bias, b2, d2.mean(0)),
        (rule.head.weight, wo, e.T @ a2 / n),
        (rule.head.bias, bo, e.mean(0)),
    ):
        torch.testing.assert_close(got.detach().double(), before - 0.5 * grad, atol=1e-5, rtol=1e-5)
    # The hidden updates are FA's: backprop's would carry the error through W_out^T and W_2^T.
    bp_d2 = (e @ wo) * (z2 > 0)
    assert not torch.allclose(d2, bp_d2, atol=1e-6)


def test_fa_feedback_is_fixed_drawn_from_the_seed_and_checkpointed() -> None:
    case = RuleCase("fa", "mlp_2x8")
    rule = case.make()
    before = [rule.feedback[k].clone() for k in range(2)]
    rule.train()
    rule.train_step(case.batch(0))
    assert all(torch.equal(rule.feedback[k], before[k]) for k in range(2))
    assert {"feedback.b0", "feedback.b1"} <= set(rule.modules.state_dict())
    assert [tuple(rule.feedback[k].shape) for k in range(2)] == [(8, 8), (8, 10)]
    assert not any(p is rule.feedback[0] for p in rule.modules.parameters())  # never trained
    again, other = case.make(seed=0), case.make(seed=1)
    assert torch.equal(again.feedback[1], before[1])
    assert not torch.equal(other.feedback[1], before[1])
