"""NoProp: its schedules and DT coefficients against independent derivations, the locality of
its blocks (and its twin's lack of it), activation memory flat in T, the chains with an oracle
denoiser, learning a separable toy problem in each variant, and the conformance suite on the
variants and embeddings the registry-wide run does not cover."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bpfree.config import TrainConfig
from bpfree.engine import build_rule
from bpfree.errors import ConfigError
from bpfree.meters.probe import probe_phase
from bpfree.models import create_model
from bpfree.models.noprop import GammaSchedule, NoPropNet, cosine_alpha_bar, dt_coefficients, snr
from bpfree.rules import Batch, Phase, Rule, create_rule
from bpfree.rules.toolkit import cooldown_factor
from bpfree.testing.conformance import RuleCase, tiny_data

FAST = {"lr": 3e-3}
SGD = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "lr": 0.1}  # step = -lr grad


# ---- the schedules ----------------------------------------------------------------------
def test_the_cosine_schedule_and_its_snr() -> None:
    ab = cosine_alpha_bar(10)
    s = 0.008
    for t in (0, 1, 5, 9, 10):  # cos^2(pi/2 (1 - t/T + s) / (1 + s)), by hand
        want = math.cos(math.pi / 2 * (1 - t / 10 + s) / (1 + s)) ** 2
        assert ab[t].item() == pytest.approx(want, rel=1e-12, abs=1e-30)
    assert (ab.diff() > 0).all() and ab[0] < 1e-30 and 0.9998 < ab[10] < 0.9999
    r = snr(ab)
    assert r[5].item() == pytest.approx(ab[5].item() / (1 - ab[5].item()), rel=1e-12)
    assert r[10].item() == pytest.approx(6433.6, rel=1e-4)  # finite: abar_T < 1
    net = create_model("noprop_dt", (1, 8, 8))
    torch.testing.assert_close(net.alpha_bar, ab.float())
    torch.testing.assert_close(net.snr_step.double(), r.diff(), rtol=1e-6, atol=0)
    assert (net.snr_step > 0).all()


@pytest.mark.parametrize("steps", [3, 10])
def test_dt_coefficients_are_the_gaussian_posterior_of_z_t(steps: int) -> None:
    """(a, b, c) against Gaussian conditioning: z_t ~ N(sqrt(abar_t) u, 1 - abar_t) and
    z_{t-1} = sqrt(alpha_{t-1}) z_t + noise give E[z_t | z_{t-1}] = sqrt(abar_t) u + k (z_{t-1}
    - sqrt(abar_{t-1}) u), k = Cov / Var, and Var[z_t | z_{t-1}] = (1 - abar_t) - Cov^2 / Var."""
    ab = cosine_alpha_bar(steps)
    a, b, c = dt_coefficients(ab)
    for t in range(1, steps + 1):
        alpha = ab[t - 1] / ab[t]
        cov, var = alpha.sqrt() * (1 - ab[t]), 1 - ab[t - 1]
        k = cov / var
        torch.testing.assert_close(b[t - 1], k, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(
            a[t - 1], ab[t].sqrt() - k * ab[t - 1].sqrt(), rtol=1e-12, atol=0
        )
        torch.testing.assert_close(c[t - 1], (1 - ab[t]) - cov**2 / var, rtol=1e-10, atol=1e-15)
    # the identities the card states: the marginal mean and variance are carried step to step
    torch.testing.assert_close(a + b * ab[:-1].sqrt(), ab[1:].sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(c + b**2 * (1 - ab[:-1]), 1 - ab[1:], rtol=1e-12, atol=0)
    assert (c > 0).all() and (a > 0).all()


def test_the_ct_schedule_is_monotone_with_a_closed_form_snr_rate() -> None:
    torch.manual_seed(0)
    schedule = GammaSchedule()
    t = torch.linspace(0, 1, 101)[:, None].requires_grad_(True)
    gamma, dgamma = schedule(t)
    assert gamma[0].item() == pytest.approx(7.0, abs=1e-5)
    assert gamma[-1].item() == pytest.approx(-7.0, abs=1e-5)
    assert (gamma.diff(dim=0) < 0).all() and (dgamma < 0).all()  # SNR rises with t
    (auto,) = torch.autograd.grad(gamma.sum(), t)
    torch.testing.assert_close(dgamma, auto, rtol=1e-4, atol=1e-4)
    snr_rate = -dgamma * torch.exp(-gamma)  # what the CT loss weighs with
    (auto_rate,) = torch.autograd.grad(torch.exp(-schedule(t)[0]).sum(), t)
    torch.testing.assert_close(snr_rate, auto_rate, rtol=1e-4, atol=1e-4)


# ---- the chains with an oracle denoiser -------------------------------------------------
class Oracle(nn.Module):
    """A block that knows the labels: logits 50 * onehot(y) (dt, ct), or fm's exact velocity."""

    def __init__(self, u: torch.Tensor, y: torch.Tensor, velocity: bool = False) -> None:
        super().__init__()
        self.u, self.y, self.velocity = u, y, velocity

    def forward(
        self, x: torch.Tensor, z: torch.Tensor, t: Any = None, generator: Any = None
    ) -> torch.Tensor:
        if self.velocity:  # E[u - z_0 | z_t] = (u - z_t) / (1 - t)
            return (self.u - z) / (1 - t)
        return 50.0 * F.one_hot(self.y, 10).float()


@pytest.mark.parametrize("kind", ["dt", "ct", "fm"])
def test_the_chains_reach_the_label_with_an_oracle_denoiser(kind: str) -> None:
    torch.manual_seed(0)
    net = create_model(f"noprop_{kind}_t8_w8", (1, 8, 8))
    assert isinstance(net, NoPropNet)
    y = torch.tensor([3, 1, 4, 1, 5])
    u = net.embedding.detach()[y]
    for k in range(len(net.blocks)):
        net.blocks[k] = Oracle(u, y, velocity=kind == "fm")
    z = net(torch.zeros(5, 1, 8, 8), 100 if kind == "ct" else None)
    if kind == "dt":  # the posterior-mean chain carries sqrt(abar_t) u_y exactly
        torch.testing.assert_close(z, net.alpha_bar[-1].sqrt() * u, rtol=1e-5, atol=1e-5)
    elif kind == "ct":  # Euler on the probability-flow ODE: z(1) = sqrt(abar(1)) u, to O(dt)
        torch.testing.assert_close(z, u, rtol=0, atol=0.01)
    else:  # the last Euler step of the oracle velocity lands on u exactly
        torch.testing.assert_close(z, u, rtol=1e-5, atol=1e-5)


# ---- locality, memory, the twin ---------------------------------------------------------
def _step_after_perturbing(rule: str, block: int, hp: dict[str, Any]) -> list[torch.Tensor]:
    """Each block's first weight after one step, with ``block``'s weights perturbed first."""
    case = RuleCase(rule, "noprop_dt_t3_w16", hp)
    r = case.make()
    if block >= 0:
        with torch.no_grad():
            for p in r.model.blocks[block].parameters():
                p.mul_(-2.0).add_(0.1)
    r.train()
    r.start_phase(r.phases()[0], case.data.train_x, case.data.train_y)
    r.train_step(case.batch(0))
    return [b.convs[0].weight.detach().clone() for b in r.model.blocks]


def test_a_noprop_block_update_ignores_the_other_blocks_and_the_twins_does_not() -> None:
    base = _step_after_perturbing("noprop", -1, SGD)
    start = RuleCase("noprop", "noprop_dt_t3_w16", SGD).make().model.blocks
    assert all(not torch.equal(b.convs[0].weight, w) for b, w in zip(start, base, strict=True))
    for perturbed in (0, 2):
        after = _step_after_perturbing("noprop", perturbed, SGD)
        for k in range(3):
            if k != perturbed:
                torch.testing.assert_close(after[k], base[k], rtol=0, atol=0, msg=f"block {k}")
    twin_base = _step_after_perturbing("bp", -1, SGD)
    twin = _step_after_perturbing("bp", 2, SGD)  # end to end: block 0 hears block 2
    assert not torch.allclose(twin[0], twin_base[0], rtol=0, atol=1e-6)


def _activation_bytes(rule: str, model: str) -> int:
    config = TrainConfig.build(
        {
            "rule": rule,
            "model": model,
            "dataset": "digits",
            "device": "cpu",
            "train_samples": 300,
            "hparams": {"batch_size": 128},
        }
    )
    data = tiny_data("digits", 300)
    built = build_rule(config, data)
    probe = probe_phase(built, data, torch.device("cpu"), built.phases()[0])
    assert not isinstance(probe, str), probe
    return probe.activation_bytes


def test_noprop_activation_memory_does_not_grow_with_the_number_of_blocks() -> None:
    act = {
        (r, t): _activation_bytes(r, f"noprop_dt_t{t}_w32")
        for r in ("noprop", "bp")
        for t in (2, 8)
    }
    assert act["noprop", 8] < 1.2 * act["noprop", 2], act
    assert act["bp", 8] > 2.0 * act["bp", 2], act  # the twin keeps every block's graph


def test_the_twin_has_the_same_parameters_and_the_same_inference_chain() -> None:
    noprop, twin = (
        RuleCase("noprop", "noprop_dt_t4_w16").make(),
        RuleCase("bp", "noprop_dt_t4_w16").make(),
    )
    assert noprop.num_parameters() == twin.num_parameters()  # W_out is the twin's head
    x = tiny_data().val_x[:6]
    calls: list[int] = []
    for r in (noprop, twin):
        handles = [b.register_forward_hook(lambda *_: calls.append(1)) for b in r.model.blocks]
        r.eval()
        with torch.no_grad():
            r.predict(x)
        for h in handles:
            h.remove()
    assert len(calls) == 2 * 4  # T block passes each
    with torch.no_grad():
        torch.testing.assert_close(noprop.predict(x), noprop.head(noprop.model(x)))


def test_dts_shared_optimizer_keeps_pace_with_the_blocks_under_a_schedule() -> None:
    """The output layer steps T times a batch; its cool-down must still span the phase."""
    case = RuleCase("noprop", "noprop_dt_t3_w8", {"lr_cooldown": True})
    rule, data = case.make(), case.data
    n = data.train_x.shape[0]
    total = -(-n // case.batch_size)  # one epoch
    rule.train()
    rule.start_phase(Phase("train", 0, 1), data.train_x, data.train_y)
    for step in range(3 * total // 4):
        rule.train_step(case.batch(step))
    k = 3 * total // 4  # steps taken: the blocks' k-th, the output layer's (3k)-th step
    block_lr, out_lr = (rule.opts[name].param_groups[0]["lr"] for name in ("block0", "out"))
    assert block_lr == pytest.approx(1e-3 * cooldown_factor(k - 1, total))
    assert out_lr == pytest.approx(1e-3 * cooldown_factor(3 * k - 1, 3 * total))
    assert out_lr > 2 * 1e-3 * cooldown_factor(3 * k - 1, total)  # not run out 3x too early


# ---- learning a separable toy problem ---------------------------------------------------
def _toy(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes of 8x8 images: a bright 4x4 quadrant (the class) on noise."""
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    for i, label in enumerate(y.tolist()):
        r, c = divmod(label, 2)
        x[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 2.0
    return x, y


def _train_toy(model: str, hp: dict[str, Any], steps: int) -> tuple[Rule, list[float], float]:
    torch.manual_seed(0)
    rule = create_rule("noprop", hp)
    cpu = torch.device("cpu")
    rule.setup(create_model(model, (1, 8, 8)), 4, cpu, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    x, y = _toy(512, g)
    rule.train()
    rule.start_phase(rule.phases()[0], x, y)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, 512, (32,), generator=g)
        losses.append(float(rule.train_step(Batch(x[idx], y[idx], idx))))
    rule.eval()
    xt, yt = _toy(256, g)
    with torch.no_grad():
        accuracy = float((rule.predict(xt).argmax(1) == yt).float().mean())
    return rule, losses, accuracy


@pytest.mark.parametrize(
    ("model", "hp", "steps"),
    [
        ("noprop_dt_t3_w32_c4", FAST, 60),
        ("noprop_dt_t3_w32_e64_c4", {**FAST, "embedding": "prototype"}, 60),
        ("noprop_ct_w32_c4", {**FAST, "variant": "ct"}, 150),
        ("noprop_ct_w32_e8_c4", {**FAST, "variant": "ct", "embedding": "learned"}, 150),
        ("noprop_fm_w32_c4", {**FAST, "variant": "fm"}, 60),
    ],
    ids=str,
)
def test_noprop_learns_a_separable_toy_problem(model: str, hp: dict[str, Any], steps: int) -> None:
    _, losses, accuracy = _train_toy(model, hp, steps)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10]), losses
    assert accuracy > 0.95, accuracy


def test_prototype_embeddings_start_as_the_class_mean_images() -> None:
    case = RuleCase("noprop", "noprop_dt_t2_w8_e64", {"embedding": "prototype"})
    rule, data = case.make(), case.data
    rule.start_phase(rule.phases()[0], data.train_x, data.train_y)
    for c in (0, 7):
        want = data.train_x[data.train_y == c].flatten(1).mean(0)
        torch.testing.assert_close(rule.model.embedding[c].detach(), want)


@pytest.mark.parametrize(
    ("model", "hp", "message"),
    [
        ("noprop_dt", {"variant": "ct"}, "variant=ct trains noprop_ct"),
        ("noprop_dt_e20", {}, "one-hot embeddings need d = 10"),
        ("noprop_dt_e20", {"embedding": "prototype"}, "need d = 64"),
        ("noprop_dt_c4", {}, "add _c10"),
    ],
)
def test_mismatched_settings_are_refused(model: str, hp: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RuleCase("noprop", model, hp).make()
    with pytest.raises(ConfigError, match="inference_steps applies"):
        create_rule("noprop", {"inference_steps": 5})


def test_each_variant_finds_its_own_network_without_model() -> None:
    from bpfree.comparison.plan import parse_entries

    pick = {
        v: TrainConfig(rule="noprop", dataset="digits", hparams={"variant": v}).model
        for v in ("dt", "ct", "fm")
    }
    assert pick == {"dt": "noprop_dt", "ct": "noprop_ct", "fm": "noprop_fm"}
    entries = parse_entries("noprop,noprop:variant=ct,noprop:variant=fm", "digits")
    assert [e.model for e in entries] == ["noprop_dt", "noprop_ct", "noprop_fm"]
    # --model still wins, also for a variant's label (which holds an '=' itself)
    chosen = parse_entries("noprop:variant=ct", "digits", {"noprop:variant=ct": "noprop_ct_t4"})
    assert chosen[0].model == "noprop_ct_t4"
    from bpfree.cli_compare import model_overrides

    assert model_overrides(["noprop:variant=ct=noprop_ct_t4", "mf=mlp_2x8"]) == {
        "noprop:variant=ct": "noprop_ct_t4",
        "mf": "mlp_2x8",
    }
