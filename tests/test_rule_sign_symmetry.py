"""Sign symmetry: its update against backprop's (feedback = W) and against the formula of its
card, its convolution's backward, and where its feedback magnitudes come from."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from bpfree.errors import ConfigError
from bpfree.models import create_model
from bpfree.rules import Rule
from bpfree.rules.sign_symmetry import _FeedbackConv2d, _FeedbackLinear, xavier_std
from bpfree.testing.conformance import RuleCase

SGD = {"optimizer": "sgd", "momentum": 0.0, "lr": 0.1, "weight_decay": 0.0}


def _spy(rule: Rule) -> list[list[torch.Tensor]]:
    """Record the feedback weights of every step (one list per step, layers 1 .. L+1)."""
    real: Callable[[int, torch.Tensor], torch.Tensor] = rule.feedback  # type: ignore[attr-defined]
    steps: list[list[torch.Tensor]] = []

    def feedback(k: int, weight: torch.Tensor) -> torch.Tensor:
        if k == 1:
            steps.append([])
        b = real(k, weight)
        steps[-1].append(b.clone())
        return b

    rule.feedback = feedback  # type: ignore[attr-defined]
    return steps


@pytest.mark.parametrize("model", ["mlp_3x16", "lenet5", "cnn_3block"])
def test_with_the_weights_as_feedback_one_step_is_one_backprop_step(model: str) -> None:
    ss, bp = RuleCase("sign_symmetry", model, SGD).make(), RuleCase("bp", model, SGD).make()
    want = dict(bp.modules.named_parameters())
    for name, p in ss.modules.named_parameters():
        assert torch.equal(p, want[name]), name  # same body and head at the same seed
    batch = RuleCase("sign_symmetry", model).batch(0, size=32)
    ss.train()
    bp.train()
    shapes = []

    def weight_itself(k: int, weight: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(weight.shape))
        return weight.clone()

    with mock.patch.object(ss, "feedback", weight_itself):
        loss_ss = ss.train_step(batch)
    loss_bp = bp.train_step(batch)
    assert shapes == [tuple(layer.weight.shape) for layer in ss.layers[1:]]
    torch.testing.assert_close(loss_ss, loss_bp)
    for name, p in ss.modules.named_parameters():
        torch.testing.assert_close(p, want[name], atol=1e-6, rtol=1e-5, msg=name)
    for name, buf in ss.modules.named_buffers():  # BatchNorm statistics: one ordinary forward
        torch.testing.assert_close(buf, dict(bp.modules.named_buffers())[name], msg=name)


@pytest.mark.parametrize("model", ["lenet5", "cnn_3block"])
def test_each_layer_sends_its_error_down_through_its_own_feedback(model: str) -> None:
    """With B_k = 0 (and B = W elsewhere) no error reaches the layers below layer k."""
    case = RuleCase("sign_symmetry", model, SGD)
    for cut in range(1, 5 if model == "lenet5" else 4):
        rule = case.make()
        rule.train()

        def cut_at(k: int, weight: torch.Tensor, cut: int = cut) -> torch.Tensor:
            return torch.zeros_like(weight) if k == cut else weight.clone()

        with mock.patch.object(rule, "feedback", cut_at):
            rule.train_step(case.batch(0))
        grads = [layer.weight.grad for layer in rule.layers]
        assert all(not g.any() for g in grads[:cut]), f"{model}: an error got below layer {cut}"
        assert all(g.abs().sum() > 0 for g in grads[cut:]), f"{model}: cut at {cut}"


def test_usf_update_of_a_two_hidden_layer_net_equals_its_formula() -> None:
    case = RuleCase("sign_symmetry", "mlp_2x6", {**SGD, "lr": 0.5})
    rule = case.make()
    batch = case.batch(0, size=16)
    l1, l2 = rule.model.blocks[0].linear, rule.model.blocks[1].linear
    w1, b1 = l1.weight.detach().double().clone(), l1.bias.detach().double().clone()
    w2, b2 = l2.weight.detach().double().clone(), l2.bias.detach().double().clone()
    wo, bo = rule.head.weight.detach().double().clone(), rule.head.bias.detach().double().clone()
    x, y = batch.x.flatten(1).double(), batch.y
    n = x.shape[0]
    s2 = math.sqrt(2 / (6 + 6))  # Xavier std of W_2 (6, 6)
    so = math.sqrt(2 / (6 + 10))  # of W_out (10, 6)
    assert xavier_std(l2.weight) == pytest.approx(s2) and xavier_std(wo) == pytest.approx(so)

    z1 = x @ w1.T + b1
    a1 = z1.clamp_min(0)
    z2 = a1 @ w2.T + b2
    a2 = z2.clamp_min(0)
    e = (torch.softmax(a2 @ wo.T + bo, dim=1) - F.one_hot(y, 10).double()) / n  # dL/dlogits
    d2 = (e @ (so * wo.sign())) * (z2 > 0)  # through s sign(W_out), not W_out
    d1 = (d2 @ (s2 * w2.sign())) * (z1 > 0)  # through s sign(W_2), not W_2
    rule.train()
    rule.train_step(batch)
    for got, before, grad in (
        (l1.weight, w1, d1.T @ x),
        (l1.bias, b1, d1.sum(0)),
        (l2.weight, w2, d2.T @ a1),
        (l2.bias, b2, d2.sum(0)),
        (rule.head.weight, wo, e.T @ a2),
        (rule.head.bias, bo, e.sum(0)),
    ):
        torch.testing.assert_close(got.detach().double(), before - 0.5 * grad, atol=1e-5, rtol=1e-5)
    # The hidden updates are sign symmetry's: backprop's would carry the error through W_out.
    assert not torch.allclose(d2, (e @ wo) * (z2 > 0), atol=1e-6)


@pytest.mark.parametrize(("stride", "padding"), [(1, 2), (2, 1), (1, 0)])
def test_conv_error_to_the_input_is_the_transposed_convolution_with_the_feedback(
    stride: int, padding: int
) -> None:
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, kernel_size=5, stride=stride, padding=padding).double()
    x = torch.randn(2, 3, 10, 10, generator=g, dtype=torch.float64)
    fb = torch.randn(conv.weight.shape, generator=g, dtype=torch.float64)
    x_ss = x.clone().requires_grad_()
    out = _FeedbackConv2d.apply(x_ss, conv.weight, conv.bias, fb, conv)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)
    out.backward(upstream)

    # The same forward with autograd: the weight gradients are the usual ones ...
    x_bp = x.clone().requires_grad_()
    ref = F.conv2d(x_bp, conv.weight, conv.bias, stride, padding)
    torch.testing.assert_close(out, ref)
    dx_bp, dw, db = torch.autograd.grad(ref, (x_bp, conv.weight, conv.bias), upstream)
    torch.testing.assert_close(conv.weight.grad, dw)
    torch.testing.assert_close(conv.bias.grad, db)
    # ... the error to the input is autograd's through a conv whose weight is the feedback,
    x_fb = x.clone().requires_grad_()
    (dx_fb,) = torch.autograd.grad(F.conv2d(x_fb, fb, None, stride, padding), x_fb, upstream)
    torch.testing.assert_close(x_ss.grad, dx_fb)
    # ... which is the transposed convolution of the upstream error with the feedback,
    extra = x.shape[-1] - ((out.shape[-1] - 1) * stride - 2 * padding + 5)  # rows stride cut
    dx_t = F.conv_transpose2d(upstream, fb, None, stride, padding, output_padding=extra)
    torch.testing.assert_close(x_ss.grad, dx_t)
    # ... and not backprop's.
    assert not torch.allclose(x_ss.grad, dx_bp)


def test_linear_error_to_the_input_goes_through_the_feedback() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    fb = torch.randn(3, 7, generator=g, dtype=torch.float64)
    upstream = torch.randn(5, 3, generator=g, dtype=torch.float64)
    out = _FeedbackLinear.apply(x, w, None, fb)
    torch.testing.assert_close(out, x @ w.T)
    out.backward(upstream)
    torch.testing.assert_close(x.grad, upstream @ fb)
    torch.testing.assert_close(w.grad, upstream.T @ x)


def test_usf_feedback_is_the_scaled_sign_of_the_current_weight() -> None:
    case = RuleCase("sign_symmetry", "lenet5")
    rule = case.make()
    steps = _spy(rule)
    rule.train()
    for step in range(2):
        weights = [layer.weight.detach().clone() for layer in rule.layers[1:]]
        rule.train_step(case.batch(step))
        for b, w in zip(steps[-1], weights, strict=True):
            torch.testing.assert_close(b, xavier_std(w) * w.sign(), rtol=0, atol=0)
    assert xavier_std(rule.layers[1].weight) == pytest.approx(math.sqrt(2 / (6 * 25 + 16 * 25)))


def test_brsf_redraws_its_magnitudes_every_step_from_the_rules_generator() -> None:
    case = RuleCase("sign_symmetry", "lenet5", {"variant": "brsf"})
    draws = []
    for seed in (0, 0, 1):
        rule = case.make(seed=seed)
        steps = _spy(rule)
        rule.train()
        signs = []
        for step in range(2):
            signs.append([layer.weight.detach().sign() for layer in rule.layers[1:]])
            rule.train_step(case.batch(step))
        for fbs, sign in zip(steps, signs, strict=True):
            for b, s, layer in zip(fbs, sign, rule.layers[1:], strict=True):
                assert torch.equal(b.sign(), s)  # sign-concordant with W at that step
                bound = math.sqrt(3.0) * xavier_std(layer.weight)
                assert float(b.abs().max()) <= bound  # |M| ~ U(0, sqrt(6 / (fan_in + fan_out)))
        draws.append([[b.abs() for b in fbs] for fbs in steps])
    first, again, other = draws
    assert not torch.equal(first[0][0], first[1][0])  # a fresh draw at the second step
    for s, t in zip(first, again, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(s, t, strict=True))  # same seed, same draws
    assert not torch.equal(first[0][0], other[0][0])  # another seed, other magnitudes


def test_frsf_keeps_fixed_magnitudes_checkpointed() -> None:
    case = RuleCase("sign_symmetry", "lenet5", {"variant": "frsf"})
    rule = case.make()
    names = {f"magnitude.b{k}" for k in range(len(rule.layers) - 1)}
    assert names <= set(rule.modules.state_dict())
    assert not any(p is rule.magnitude[0] for p in rule.modules.parameters())  # never trained
    steps = _spy(rule)
    rule.train()
    for step in range(2):
        signs = [layer.weight.detach().sign() for layer in rule.layers[1:]]
        rule.train_step(case.batch(step))
        for k, (b, s) in enumerate(zip(steps[-1], signs, strict=True)):
            assert bool((rule.magnitude[k] >= 0).all())
            torch.testing.assert_close(b, rule.magnitude[k] * s, rtol=0, atol=0)
    other = case.make(seed=1)
    assert not torch.equal(other.magnitude[0], rule.magnitude[0])
    other.load_state_dict(copy.deepcopy(rule.state_dict()))
    for k in range(len(rule.layers) - 1):
        assert torch.equal(other.magnitude[k], rule.magnitude[k])


def test_lenet5_shapes_and_its_smallest_image() -> None:
    net = create_model("lenet5", (1, 28, 28))
    assert net.family == "cnn" and net.block_dims == [6 * 14 * 14, 16 * 5 * 5, 120, 84]
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 84)
    assert [b.conv.kernel_size for b in net.blocks[:2]] == [(5, 5), (5, 5)]
    small = create_model("lenet5", (1, 8, 8))  # digits: 8 -> 4 -> (padding 1) 2 -> 1
    assert small.block_dims == [6 * 4 * 4, 16, 120, 84]
    h = torch.zeros(3, 1, 8, 8)
    for block, dim in zip(small.blocks, small.block_dims, strict=True):
        h = block(h)
        assert h.flatten(1).shape[1] == dim
    assert create_model("lenet5", (3, 32, 32)).block_dims[1] == 16 * 6 * 6
    with pytest.raises(ConfigError, match="at least 8x8"):
        create_model("lenet5", (1, 7, 28))


def test_the_training_forward_is_the_ordinary_forward() -> None:
    for model in ("lenet5", "mlp_2x8", "cnn_3block"):
        rule = RuleCase("sign_symmetry", model).make()
        rule.eval()  # BatchNorm on running statistics: both passes see the same
        x = RuleCase("sign_symmetry", model).batch(0).x
        fb = [None, *(layer.weight.detach() for layer in rule.layers[1:])]
        with torch.no_grad():
            torch.testing.assert_close(rule._forward(x, fb), rule.predict(x), rtol=0, atol=0)


def test_bodies_it_cannot_run_are_refused() -> None:
    with pytest.raises(ConfigError, match="dropout"):
        RuleCase("sign_symmetry", "mlp_2x8_drop10").make()
