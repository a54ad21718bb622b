"""MeZO / ZO-Bench variants: the SPSA estimate, in-place perturbation and each update, checked
against hand computations (float64, z regenerated here from the step's seeds)."""

from __future__ import annotations

import copy
import math
from typing import Any
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from bpfree.errors import ConfigError
from bpfree.meters.memory import TensorMemoryTracker
from bpfree.models import create_model
from bpfree.rules import RULES, Batch, Phase
from bpfree.rules.toolkit import Directions, Distribution, draw_direction, draw_seeds
from bpfree.testing.conformance import RuleCase
from bpfree.testing.properties import count_rows, first_layer

Params = list[torch.Tensor]


def _rule(hp: dict[str, Any] | None = None, model: str = "mlp_2x8", seed: int = 0) -> Any:
    """A mezo rule in float64 (parameters keep their identity, so its optimizers stay valid)."""
    rule = RuleCase("mezo", model, {"eps": 1e-3, **(hp or {})}).make(seed)
    rule.modules.double()
    rule.train()
    return rule


def _batch(n: int = 32, step: int = 0) -> Batch:
    b = RuleCase("mezo", "mlp_2x8").batch(step, size=n)
    return Batch(b.x.double(), b.y, b.index)


def _params(rule: Any) -> Params:
    return [p.detach().clone() for p in rule.params if p.requires_grad]


def _seeds(rule: Any, q: int) -> list[int]:
    """The seeds the rule's next step draws (from a copy of its seed stream)."""
    return draw_seeds(torch.Generator().set_state(rule.seeds.get_state()), q)


def _z(rule: Any, seed: int, distribution: Distribution = "gaussian") -> Params:
    """z(seed) over the trainable tensors, regenerated here from a fresh generator."""
    g = torch.Generator().manual_seed(seed)
    return [draw_direction(p, g, distribution) for p in rule.params if p.requires_grad]


def _loss_of(rule: Any, values: Params, batch: Batch) -> torch.Tensor:
    """L(values) with the rule's body and head in eval mode; the rule's tensors untouched."""
    named = [n for n, p in rule.modules.named_parameters() if p.requires_grad]
    params = dict(zip(named, values, strict=True))
    body = {k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")}
    head = {k.removeprefix("head."): v for k, v in params.items() if k.startswith("head.")}
    was = rule.modules.training
    rule.modules.eval()
    logits = functional_call(rule.head, head, (functional_call(rule.model, body, (batch.x,)),))
    rule.modules.train(was)
    return F.cross_entropy(logits, batch.y)


def _loss_at(rule: Any, values: Params, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return _loss_of(rule, values, batch)


def _true_gradient(rule: Any, theta: Params, batch: Batch) -> Params:
    """grad L at theta by reverse mode (the reference, only here in the test)."""
    leaves = [t.clone().requires_grad_(True) for t in theta]
    with torch.enable_grad():
        return list(torch.autograd.grad(_loss_of(rule, leaves, batch), leaves))


def _shifted(theta: Params, z: Params, c: float) -> Params:
    return [t + c * v for t, v in zip(theta, z, strict=True)]


def _g(rule: Any, theta: Params, z: Params, batch: Batch, eps: float, two: bool = True) -> float:
    """The projected gradient by hand: a central (or forward) difference along z."""
    plus = _loss_at(rule, _shifted(theta, z, eps), batch)
    if two:
        return ((plus - _loss_at(rule, _shifted(theta, z, -eps), batch)) / (2 * eps)).item()
    return ((plus - _loss_at(rule, theta, batch)) / eps).item()


def _assert_params(rule: Any, expected: Params, **tol: float) -> None:
    got = [p.detach() for p in rule.params if p.requires_grad]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **tol)


# ---- the estimate ---------------------------------------------------------------------------
def test_projected_gradient_is_the_central_difference_along_the_regenerated_z() -> None:
    """g = (L(theta + eps z) - L(theta - eps z)) / 2 eps with z regenerated here from the seed,
    and theta <- theta - eta g z. At eps = 1e-5 (float64; no ReLU kink crossed, unlike 1e-3 on
    this narrow net) g is the directional derivative grad L . z (reverse mode, here only)."""
    rule, batch = _rule({"lr": 0.5, "eps": 1e-5}), _batch()
    theta, (seed,) = _params(rule), _seeds(rule, 1)
    z = _z(rule, seed)
    g = _g(rule, theta, z, batch, 1e-5)
    grads = _true_gradient(rule, theta, batch)
    directional = sum((a * b).sum() for a, b in zip(grads, z, strict=True)).item()
    assert g == pytest.approx(directional, rel=1e-5)
    rule.train_step(batch)
    _assert_params(rule, _shifted(theta, z, -0.5 * g), rtol=1e-9, atol=1e-12)


def test_the_average_of_many_estimates_is_the_gradient() -> None:
    """E[g z] = grad L (E[z z^T] = I): q = 3000 seeds in one step, cosine with the truth > 0.9."""
    rule, batch = _rule({"lr": 1.0, "q": 3000}, model="mlp_1x2"), _batch()
    theta = _params(rule)
    truth = _true_gradient(rule, theta, batch)
    rule.train_step(batch)
    estimate = torch.cat([(t - p).flatten() for t, p in zip(theta, _params(rule), strict=True)])
    true = torch.cat([g.flatten() for g in truth])
    assert F.cosine_similarity(estimate, true, dim=0) > 0.9
    assert estimate.norm() == pytest.approx(true.norm().item(), rel=0.3)


def test_q_seeds_are_averaged_into_one_step() -> None:
    rule, batch = _rule({"lr": 0.3, "q": 3}), _batch()
    theta = _params(rule)
    expected = theta
    for seed in _seeds(rule, 3):
        z = _z(rule, seed)
        expected = _shifted(expected, z, -0.3 * _g(rule, theta, z, batch, 1e-3) / 3)
    rule.train_step(batch)
    _assert_params(rule, expected, rtol=1e-9, atol=1e-12)


# ---- perturbation in place ------------------------------------------------------------------
def _record_first_layer(rule: Any) -> tuple[list[torch.Tensor], Any]:
    seen: list[torch.Tensor] = []
    layer = first_layer(rule)
    handle = layer.register_forward_pre_hook(lambda m, _: seen.append(m.weight.detach().clone()))
    return seen, handle


@pytest.mark.parametrize("perturbation", ["two_side", "one_side"])
def test_the_losses_are_taken_where_each_perturbation_mode_says(perturbation: str) -> None:
    """two_side: L(theta + eps z), L(theta - eps z); one_side: L(theta), L(theta + eps z), and
    g = (L+ - L(theta)) / eps (ZO-Bench's one_side)."""
    rule, batch = _rule({"lr": 0.5, "perturbation": perturbation, "eps": 1e-2}), _batch()
    theta, (seed,) = _params(rule), _seeds(rule, 1)
    z = _z(rule, seed)
    seen, handle = _record_first_layer(rule)
    rule.train_step(batch)
    handle.remove()
    w, zw = theta[0], z[0]  # the first layer's weight comes first
    points = [w + 1e-2 * zw, w - 1e-2 * zw] if perturbation == "two_side" else [w, w + 1e-2 * zw]
    assert len(seen) == len(points) == rule.forward_passes()
    for got, want in zip(seen, points, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    g = _g(rule, theta, z, batch, 1e-2, two=perturbation == "two_side")
    _assert_params(rule, _shifted(theta, z, -0.5 * g), rtol=1e-9, atol=1e-12)


def test_perturb_and_restore_come_back_within_rounding_not_bit_exact() -> None:
    """theta + eps z - 2 eps z + eps z rounds three times (float32): each entry is back within
    2^-22 (|theta| + 2 eps |z|) (a few ulps), and, with no saved copy, not always bit-exact."""
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(300, 200, generator=g), torch.randn(200, generator=g)]
    before = [p.clone() for p in params]
    d = Directions("gaussian")
    d.shift_(params, [(7, 1e-3)])
    assert not any(torch.equal(a, b) for a, b in zip(params, before, strict=True))
    d.shift_(params, [(7, -2e-3)])
    d.shift_(params, [(7, 1e-3)])
    z = [draw_direction(p, torch.Generator().manual_seed(7), "gaussian") for p in params[:1]]
    ulp = torch.finfo(torch.float32).eps
    bound = 2 * ulp * (before[0].abs() + 2e-3 * z[0].abs())
    assert ((params[0] - before[0]).abs() <= bound).all()
    assert not all(torch.equal(a, b) for a, b in zip(params, before, strict=True))


def test_a_step_with_a_vanishing_step_size_restores_the_parameters() -> None:
    """In float32, as trained: every entry within a few ulps of where it was (|eps z| < 1e-2)."""
    case = RuleCase("mezo", "mlp_2x8", {"lr": 1e-30})
    rule = case.make()
    before = [p.detach().clone() for p in rule.params]
    rule.train_step(case.batch(0))
    ulp = torch.finfo(torch.float32).eps
    for p, b in zip(rule.params, before, strict=True):
        assert ((p - b).abs() <= 4 * ulp * (b.abs() + 1e-2)).all()


def test_rademacher_directions_are_plus_or_minus_one() -> None:
    rule, batch = _rule({"distribution": "rademacher", "eps": 1e-2}), _batch()
    theta = _params(rule)
    seen, handle = _record_first_layer(rule)
    rule.train_step(batch)
    handle.remove()
    z = (seen[0] - theta[0]) / 1e-2
    torch.testing.assert_close(z.abs(), torch.ones_like(z))
    assert (z > 0).any() and (z < 0).any()
    big = draw_direction(torch.empty(100_000), torch.Generator().manual_seed(5), "rademacher")
    assert set(big.unique().tolist()) == {-1.0, 1.0} and abs(big.mean().item()) < 0.02


def test_the_passes_run_with_dropout_off_and_training_mode_comes_back() -> None:
    """MeZO's zo_forward: eval mode for every loss; the step is then the eval-mode estimate."""
    rule, batch = _rule({"lr": 0.5}, model="mlp_2x8_drop50"), _batch()
    theta, (seed,) = _params(rule), _seeds(rule, 1)
    z = _z(rule, seed)
    modes: list[bool] = []
    handle = first_layer(rule).register_forward_pre_hook(lambda m, _: modes.append(m.training))
    rule.train_step(batch)
    handle.remove()
    assert modes == [False, False] and rule.model.training and rule.head.training
    _assert_params(
        rule, _shifted(theta, z, -0.5 * _g(rule, theta, z, batch, 1e-3)), rtol=1e-9, atol=1e-12
    )


# ---- the variants, one step against a hand computation --------------------------------------
def test_sgd_step_with_weight_decay_skipping_one_dimensional_tensors() -> None:
    """theta <- theta - eta (g z + lambda theta), lambda only for weight matrices."""
    lr, wd = 0.2, 0.1
    rule, batch = _rule({"lr": lr, "weight_decay": wd}), _batch()
    theta, (seed,) = _params(rule), _seeds(rule, 1)
    z = _z(rule, seed)
    g = _g(rule, theta, z, batch, 1e-3)
    expected = [
        t - lr * (g * v + (wd * t if t.dim() >= 2 else 0)) for t, v in zip(theta, z, strict=True)
    ]
    rule.train_step(batch)
    _assert_params(rule, expected, rtol=1e-9, atol=1e-12)
    assert all(p.grad is None for p in rule.params)


def test_sign_step_uses_the_sign_of_the_scalar_projected_gradient() -> None:
    rule, batch = _rule({"variant": "sign", "lr": 0.01}), _batch()
    theta, (seed,) = _params(rule), _seeds(rule, 1)
    z = _z(rule, seed)
    s = math.copysign(1.0, _g(rule, theta, z, batch, 1e-3))
    rule.train_step(batch)
    _assert_params(rule, _shifted(theta, z, -0.01 * s), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("variant", ["momentum", "adam"])
def test_momentum_and_adam_steps_match_torch_formulas_over_two_steps(variant: str) -> None:
    lr, wd = 0.05, 0.01
    rule = _rule({"variant": variant, "lr": lr, "weight_decay": wd})
    batches = [_batch(step=0), _batch(step=1)]
    theta = _params(rule)
    zs = [_z(rule, s) for s in _seeds(rule, 2)]  # two steps draw one seed each, in turn
    state: list[dict[str, Any]] = [{} for _ in theta]
    for step, (batch, z) in enumerate(zip(batches, zs, strict=True), start=1):
        g = _g(rule, theta, z, batch, 1e-3)
        new = []
        for t, v, s in zip(theta, z, state, strict=True):
            grad = g * v + (wd * t if t.dim() >= 2 else 0)
            if variant == "momentum":  # torch SGD: buf = mu buf + grad; theta -= lr buf
                s["buf"] = grad if step == 1 else 0.9 * s["buf"] + grad
                new.append(t - lr * s["buf"])
            else:  # torch Adam (L2 weight decay in the gradient), bias-corrected
                s["m"] = 0.9 * s.get("m", 0) + 0.1 * grad
                s["v"] = 0.999 * s.get("v", 0) + 0.001 * grad * grad
                m_hat, v_hat = s["m"] / (1 - 0.9**step), s["v"] / (1 - 0.999**step)
                new.append(t - lr * m_hat / (v_hat.sqrt() + 1e-8))
        theta = new
        rule.train_step(batch)
        _assert_params(rule, theta, rtol=1e-7, atol=1e-10)
    assert all(p.grad is None for p in rule.params)
    one_d = [o for o in rule.optimizers().values() if o.param_groups[0]["params"][0].dim() == 1]
    assert one_d and all(o.param_groups[0]["weight_decay"] == 0 for o in one_d)


@pytest.mark.parametrize(
    ("lr", "flip", "kept"),
    [(0.05, False, "descent"), (1e4, False, "theta"), (0.05, True, "ascent")],
)
def test_conservative_keeps_the_best_of_three_points(lr: float, flip: bool, kept: str) -> None:
    """L0, then g; tries theta - eta g z and theta + eta g z; keeps the lowest of the three. A
    huge step overshoots both ways, so theta stays; an estimate with the wrong sign (forced
    here) makes theta + eta g z the real descent."""
    rule, batch = _rule({"variant": "conservative", "lr": lr}), _batch()
    theta, (seed,) = _params(rule), _seeds(rule, 1)
    z = _z(rule, seed)
    g = _g(rule, theta, z, batch, 1e-3) * (-1 if flip else 1)
    if flip:
        estimate = rule._estimate

        def flipped(*args: Any) -> Any:
            grads, loss, restore = estimate(*args)
            return [-v for v in grads], loss, restore

        rule._estimate = flipped
    points = {
        "descent": _shifted(theta, z, -lr * g),
        "theta": theta,
        "ascent": _shifted(theta, z, lr * g),
    }
    losses = {k: _loss_at(rule, v, batch).item() for k, v in points.items()}
    assert min(losses, key=losses.__getitem__) == kept  # the case is what it says
    assert rule.forward_passes() == 5
    loss = rule.train_step(batch)
    _assert_params(rule, points[kept], rtol=1e-9, atol=1e-9)
    assert loss.item() == pytest.approx(losses["theta"], rel=1e-12)  # L0 is reported


# ---- what a step touches --------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["sgd", "adam", "conservative"])
def test_frozen_parameters_are_neither_perturbed_nor_updated(variant: str) -> None:
    rule, batch = _rule({"variant": variant, "lr": 0.05}), _batch()
    for p in rule.model.parameters():
        p.requires_grad_(False)
    body = [p.detach().clone() for p in rule.model.parameters()]
    head = [p.detach().clone() for p in rule.head.parameters()]
    seen, handle = _record_first_layer(rule)
    rule.train_step(batch)
    handle.remove()
    assert all(torch.equal(w, body[0]) for w in seen)  # every pass saw the frozen weight
    assert all(torch.equal(p, b) for p, b in zip(rule.model.parameters(), body, strict=True))
    assert not any(torch.equal(p, h) for p, h in zip(rule.head.parameters(), head, strict=True))


@pytest.mark.parametrize("variant", ["sgd", "adam"])
def test_a_step_holds_one_tensor_of_z_at_a_time(variant: str) -> None:
    """Peak of what a step allocates and frees: one tensor's z (adam: that tensor's gradient,
    formed in z) plus a small batch's activations; never a gradient for every parameter. sgd
    sets no ``.grad`` at all."""
    rule = RuleCase("mezo", "mlp_6x128", {"lr": 1e-3, "variant": variant}).make()
    batch = RuleCase("mezo", "mlp_6x128").batch(0, size=4)
    sizes = [p.numel() * p.element_size() for p in rule.params]
    rule.train_step(batch)  # warm up: lazy generators, optimizer state
    optimizer_state = [
        t for o in rule.optimizers().values() for st in o.state.values() for t in st.values()
    ]
    with TensorMemoryTracker([*rule.params, *optimizer_state]) as tracker:
        tracker.mark()
        if variant == "sgd":
            with mock.patch.object(torch.nn.Parameter, "grad", _NoGrad()):
                rule.train_step(batch)
        else:
            rule.train_step(batch)
        peak = tracker.window_peak()
    assert max(sizes) <= peak < 1.25 * max(sizes) < 0.5 * sum(sizes), (peak, sizes)
    assert all(p.grad is None for p in rule.params)


class _NoGrad:
    """A ``.grad`` that fails when written (reading it is allowed)."""

    def __get__(self, obj: Any, owner: Any = None) -> None:
        return None

    def __set__(self, obj: Any, value: Any) -> None:
        raise AssertionError("the sgd variant set a .grad")


def test_updates_do_not_depend_on_the_global_rng() -> None:
    a, b = _rule({"lr": 0.1}), _rule({"lr": 0.1})
    batch = _batch()
    a.train_step(batch)
    torch.manual_seed(12345)
    torch.randn(1000)
    state = torch.get_rng_state()
    b.train_step(batch)
    assert torch.equal(torch.get_rng_state(), state)  # and it draws nothing from it
    assert all(torch.equal(p, q) for p, q in zip(a.params, b.params, strict=True))


# ---- training ------------------------------------------------------------------------------
def test_training_a_small_mlp_on_separable_blobs_lowers_the_loss() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (256,), generator=g)
    x = torch.randn(256, 1, 1, 2, generator=g) * 0.5 + (y.double() * 2 - 1).view(-1, 1, 1, 1)
    x = x.float()
    rule = RULES.get("mezo")(RULES.get("mezo").Hparams(lr=0.05))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("mlp_1x16", (1, 1, 2))
        rule.setup(model, 2, torch.device("cpu"), torch.Generator().manual_seed(1))
    full = Batch(x, y, torch.arange(256))
    rule.train()
    before = rule.train_step(full)
    for _ in range(300):
        idx = torch.randint(0, 256, (32,), generator=g)
        rule.train_step(Batch(x[idx], y[idx], idx))
    with torch.no_grad():
        after = F.cross_entropy(rule.predict(x), y)
        accuracy = (rule.predict(x).argmax(1) == y).float().mean()
    assert after < 0.5 * before and accuracy > 0.9, (before, after, accuracy)


# ---- settings -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hp", "passes"),
    [
        ({}, 2),
        ({"q": 3}, 6),
        ({"perturbation": "one_side"}, 2),
        ({"perturbation": "one_side", "q": 3}, 4),
        ({"variant": "conservative"}, 5),
        ({"variant": "conservative", "perturbation": "one_side"}, 4),
        ({"variant": "adam", "q": 2}, 4),
    ],
)
def test_forward_passes_are_declared_exactly(hp: dict[str, Any], passes: int) -> None:
    case = RuleCase("mezo", "mlp_2x8", hp)
    rule = case.make()
    assert rule.forward_passes() == passes
    with count_rows(first_layer(rule)) as rows:
        rule.train_step(case.batch(0))
    assert sum(rows) == passes * case.batch_size


def test_the_variant_names_the_optimizer_the_twin_takes_over() -> None:
    hp = RULES.get("mezo").Hparams
    assert hp.from_dict({"variant": "adam"}).optimizer == "adam"
    assert hp.from_dict({"variant": "adam", "optimizer": "adamw"}).optimizer == "adamw"
    assert hp.from_dict({"variant": "momentum"}).momentum == 0.9
    assert hp.from_dict({"variant": "momentum", "momentum": 0.5}).momentum == 0.5
    default = hp.from_dict({})
    assert (default.optimizer, default.momentum, default.eps, default.q) == ("sgd", 0.0, 1e-3, 1)
    for bad in (
        {"optimizer": "adam"},
        {"momentum": 0.9},
        {"variant": "conservative", "weight_decay": 0.1},
        {"q": 0},
        {"eps": 0.0},
        {"variant": "nesterov"},
    ):
        with pytest.raises(ConfigError):
            hp.from_dict(bad)


@pytest.mark.parametrize("variant", ["sgd", "adam"])
def test_the_step_size_schedule_advances_once_per_step(variant: str) -> None:
    """The framework's lr drop reaches every optimizer the rule reports, one tick per step."""
    case = RuleCase("mezo", "mlp_2x8", {"variant": variant, "lr": 0.1, "lr_drops": "0.5"})
    rule, data = case.make(), case.data
    rule.train()
    rule.start_phase(Phase("train", max_epochs=1), data.train_x[:64], data.train_y[:64])
    for step, lr in enumerate((0.1, 0.01)):  # 64 samples, batch 32: the drop is at step 1 of 2
        rule.train_step(case.batch(step))
        lrs = [g["lr"] for o in rule.optimizers().values() for g in o.param_groups]
        assert lrs == pytest.approx([lr] * len(lrs)), step


def test_a_half_precision_body_is_trained_in_float32() -> None:
    cls = RULES.get("mezo")
    rule = cls(cls.Hparams())
    with torch.random.fork_rng():
        model = create_model("mlp_1x8", (1, 8, 8)).half()
        rule.setup(model, 10, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert {p.dtype for p in rule.modules.parameters()} == {torch.float32}
    batch = RuleCase("mezo", "mlp_1x8").batch(0)
    assert torch.isfinite(rule.train_step(batch)) and rule.train_step(batch).dtype == torch.float32


@pytest.mark.parametrize("variant", ["sgd", "adam"])
def test_a_deep_copy_steps_exactly_as_the_rule(variant: str) -> None:
    """The cost probes step a deep copy of the rule: it must run and match the original."""
    rule, batch = _rule({"variant": variant, "lr": 0.05}), _batch()
    twin = copy.deepcopy(rule)
    for r in (rule, twin):
        r.train_step(batch)
        r.train_step(batch)
    assert all(torch.equal(p, q) for p, q in zip(rule.params, twin.params, strict=True))
    assert not any(p is q for p, q in zip(rule.params, twin.params, strict=True))
