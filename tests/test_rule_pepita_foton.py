"""PEPITA and FOTON: their updates against the formulas of their cards, in float64, and the
properties the cards claim (shared dropout masks, orthogonality, FOTON's backprop identity)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bpfree.rules import Phase
from bpfree.rules.foton import bjorck_
from bpfree.testing.conformance import RuleCase

SGD = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "lr_drops": ""}


def _weights(rule) -> list[torch.Tensor]:
    return [layer.weight.detach().double().clone() for layer in rule.layers]


def _forward(ws: list[torch.Tensor], x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    hs, a = [], x
    for w in ws[:-1]:
        a = (a @ w.T).clamp_min(0)
        hs.append(a)
    return hs, a @ ws[-1].T


@pytest.mark.parametrize("last_error", ["modulated", "standard"])
def test_pepita_update_equals_its_formula(last_error: str) -> None:
    lr = 0.3
    case = RuleCase("pepita", "mlp_2x6_nobias", {**SGD, "lr": lr, "last_error": last_error})
    rule = case.make()
    batch = case.batch(0, size=16)
    ws, f = _weights(rule), rule.feedback[0].double()  # f: (d_in, C)
    x, n = batch.x.flatten(1).double(), batch.x.shape[0]
    onehot = F.one_hot(batch.y, 10).double()

    hs, out = _forward(ws, x)
    e = torch.softmax(out, 1) - onehot
    x_mod = x + e @ f.T
    hs_mod, out_mod = _forward(ws, x_mod)
    e_mod = torch.softmax(out_mod, 1) - onehot
    want = [
        ws[0] - lr * (hs[0] - hs_mod[0]).T @ x_mod / n,
        ws[1] - lr * (hs[1] - hs_mod[1]).T @ hs_mod[0] / n,
        ws[2] - lr * (e_mod.T @ hs_mod[1] if last_error == "modulated" else e.T @ hs[1]) / n,
    ]
    rule.train()
    rule.train_step(batch)
    for k, (layer, w) in enumerate(zip(rule.layers, want, strict=True)):
        torch.testing.assert_close(layer.weight.double(), w, atol=1e-6, rtol=1e-5, msg=f"W{k}")


def test_pepita_feedback_and_init_follow_the_reference_code() -> None:
    rule = RuleCase("pepita", "mlp_1x64_nobias").make()
    d_in = rule.layers[0].in_features
    bound = 0.05 * (6 / d_in) ** 0.5
    assert rule.feedback[0].shape == (d_in, 10)
    assert rule.feedback[0].abs().max() <= bound and rule.feedback[0].abs().max() > 0.8 * bound
    for layer in rule.layers:  # He uniform: U(-sqrt(6/fan_in), sqrt(6/fan_in))
        limit = (6 / layer.in_features) ** 0.5
        assert layer.weight.abs().max() <= limit and layer.weight.abs().max() > 0.8 * limit
        assert layer.bias is None


def test_pepita_draws_one_dropout_mask_per_step_and_both_passes_share_it() -> None:
    case = RuleCase("pepita", "mlp_2x32_drop50_nobias")
    rule = case.make()
    seen: list[list[torch.Tensor | None]] = []
    real = rule._pass
    rule._pass = lambda x, masks: (seen.append(masks), real(x, masks))[1]  # type: ignore[method-assign]
    rule.train()
    rule.train_step(case.batch(0))
    assert len(seen) == 2 and seen[0] is seen[1]
    mask = seen[0][0]
    assert mask is not None and set(mask.unique().tolist()) == {0.0, 2.0}  # keep 50%, x 1/(1-p)
    rule.train_step(case.batch(1))
    assert not torch.equal(seen[2][0], mask)  # a new mask for the next batch


def test_lr_drops_multiply_the_step_size_by_a_tenth_at_each_fraction() -> None:
    case = RuleCase("pepita", "mlp_1x16_nobias", {"lr": 0.01, "lr_drops": "0.5,0.75"})
    rule = case.make()
    data = case.data
    rule.train()
    rule.start_phase(Phase("train", max_epochs=1), data.train_x[:256], data.train_y[:256])
    steps = 256 // case.batch_size  # 8 steps in the phase
    lrs = []
    for step in range(steps):
        rule.train_step(case.batch(step))
        lrs.append(rule.opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.01] * 4 + [0.001] * 2 + [0.0001] * 2)


def test_bjorck_orthonormalises_wide_tall_and_perturbed_square_matrices() -> None:
    """Björck's regime in FOTON: weights one SGD step away from orthogonal (and well-conditioned
    rectangular ones); 20 iterations bring every singular value to 1."""
    g = torch.Generator().manual_seed(0)
    square = torch.nn.init.orthogonal_(torch.empty(24, 24, dtype=torch.float64), generator=g)
    noise = 0.1 * torch.randn(24, 24, generator=g, dtype=torch.float64)
    for w in [
        torch.randn(16, 80, generator=g, dtype=torch.float64),
        torch.randn(80, 16, generator=g, dtype=torch.float64),
        square + noise,
    ]:
        assert (w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w).sub(
            torch.eye(min(w.shape))
        ).abs().max() > 0.1
        bjorck_(w, 20)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, torch.eye(min(w.shape), dtype=torch.float64))


def test_foton_update_equals_its_formula_then_bjorck() -> None:
    lr = 0.5
    case = RuleCase("foton", "mlp_2x8_nobias", {**SGD, "lr": lr, "bjorck_iters": 0})
    rule = case.make()
    batch = case.batch(0, size=16)
    ws = _weights(rule)
    x, n = batch.x.flatten(1).double(), batch.x.shape[0]
    e = torch.softmax(_forward(ws, x)[1], 1) - F.one_hot(batch.y, 10).double()
    f_t = ws[2] @ ws[1] @ ws[0]  # W_out W_2 W_1, (C, d_in)
    hs, _ = _forward(ws, x)
    hs_mod, _ = _forward(ws, x - e @ f_t)
    want = [
        ws[0] - lr * (hs[0] - hs_mod[0]).T @ x / n,  # unmodulated presynaptic activity
        ws[1] - lr * (hs[1] - hs_mod[1]).T @ hs[0] / n,
        ws[2] - lr * e.T @ hs[1] / n,
    ]
    rule.train()
    rule.train_step(batch)
    for k, (layer, w) in enumerate(zip(rule.layers, want, strict=True)):
        bjorck_(w, 0)  # zero iterations: only the division by the spectral norm
        torch.testing.assert_close(layer.weight.double(), w, atol=1e-6, rtol=1e-5, msg=f"W{k}")


def test_foton_keeps_every_weight_orthogonal_after_steps() -> None:
    case = RuleCase("foton", "mlp_2x16_nobias")
    rule = case.make()
    rule.train()
    for step in range(3):
        rule.train_step(case.batch(step))
    for layer in rule.layers:
        w = layer.weight.detach().double()
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(
            gram, torch.eye(min(w.shape), dtype=torch.float64), atol=1e-4, rtol=0
        )


def test_foton_modulation_is_backprops_error_in_a_linear_orthogonal_network() -> None:
    """The identity FOTON rests on: with linear layers and W_l W_l^T = I, the change the
    modulated input x - e F_T makes to layer l equals backprop's error e W_out W_L .. W_{l+1}."""
    rule = RuleCase("foton", "mlp_3x64_nobias").make()  # digits: d_in = 64, square W_l
    ws = _weights(rule)
    f_t = rule.feedback_product().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 64, generator=g, dtype=torch.float64)
    e = torch.randn(5, 10, generator=g, dtype=torch.float64)
    a, a_mod = x, x - e @ f_t
    for k in range(3):  # linear layers: h_l = h_{l-1} W_l^T
        a, a_mod = a @ ws[k].T, a_mod @ ws[k].T
        above = ws[3]
        for w in reversed(ws[k + 1 : 3]):
            above = above @ w  # W_out W_L .. W_{l+1}, (C, d_l)
        # to float32 orthogonality: the weights are stored in float32
        torch.testing.assert_close(a - a_mod, e @ above, atol=1e-5, rtol=1e-4)
