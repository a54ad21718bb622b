"""FLOPs counted on real training steps equal the hand-computed matmul counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bpfree.config import TrainConfig
from bpfree.data import DATASETS, DataBundle
from bpfree.engine import Trainer
from bpfree.meters.flops import count_flops
from bpfree.rules.base import Batch, Hparams, Phase, Rule, RuleInfo

D, H, C = 784, 1000, 10  # mlp_2x1000 on 28x28 inputs, 10 classes
N_TRAIN, N_VAL, N_TEST = 300, 40, 30  # 300 = 2 x 128 + a partial batch of 44


@pytest.fixture(autouse=True)
def fixed_peak(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No matmul-peak measurement in these tests (it has its own test)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    peak = {"flops_per_s": 1e11, "method": "fixed for tests", "measured_at": "now"}
    monkeypatch.setattr("bpfree.meters.suite.matmul_peak", lambda device, **kw: peak)


def synthetic_mnist(seed: int = 0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)

    def part(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, C, (n,), generator=g)

    (tx, ty), (vx, vy), (sx, sy) = part(N_TRAIN), part(N_VAL), part(N_TEST)
    return DataBundle(DATASETS.get("mnist"), tx, ty, vx, vy, sx, sy, {"source": "synthetic"})


def run(rule: str, **settings: Any) -> dict[str, Any]:
    cfg = TrainConfig.build(
        {
            "rule": rule,
            "model": "mlp_2x1000",
            "dataset": "mnist",
            "epochs": 1,
            "device": "cpu",
            **settings,
        }
    )
    result = Trainer(cfg, progress=False, data=synthetic_mnist()).run()
    return {"cost": result.cost, "metrics": result.metrics}


def test_backprop_epoch_flops_match_hand_count() -> None:
    cost = run("bp")["cost"]
    n = N_TRAIN
    forward = 2 * n * (D * H + H * H + H * C)
    weight_grads = forward
    input_grads = 2 * n * (H * H + H * C)  # not for the first layer: the input needs no grad
    assert cost["train_flops_forward"]["value"] == pytest.approx(forward, rel=0.01)
    assert cost["train_flops_backward"]["value"] == pytest.approx(
        weight_grads + input_grads, rel=0.01
    )
    assert cost["train_flops"]["value"] == pytest.approx(
        forward + weight_grads + input_grads, rel=0.01
    )
    per_sample = 2 * (D * H + H * H + H * C)  # one predict: the forward pass
    epochs = run("bp")["metrics"]["epochs_trained"]
    selection = cost["selection_flops"]["value"]
    assert selection == pytest.approx(epochs * N_VAL * per_sample, rel=0.01)
    assert cost["test_flops"]["value"] == pytest.approx(N_TEST * per_sample, rel=0.01)
    rate = cost["train_flops_per_s"]
    assert rate["value"] == pytest.approx(
        cost["train_flops"]["value"] / cost["train_wall_time"]["value"]
    )
    assert cost["train_flops_utilisation"]["value"] == pytest.approx(rate["value"] / 1e11)
    assert "partial batch of 44" in cost["train_flops"]["note"]


def test_mono_forward_epoch_flops_match_its_formula() -> None:
    cost = run("mf")["cost"]
    n = N_TRAIN
    forward = 2 * n * (D * H + H * H + 2 * H * C)  # two blocks, two projections
    # Weight gradients of W1, W2, M1, M2, and the input gradient of each projection (into its
    # layer's activations); no gradient crosses a layer boundary.
    backward = 2 * n * (D * H + H * H + 2 * H * C) + 2 * n * (2 * H * C)
    assert cost["train_flops_forward"]["value"] == pytest.approx(forward, rel=0.01)
    assert cost["train_flops_backward"]["value"] == pytest.approx(backward, rel=0.01)


def test_meters_do_not_change_training() -> None:
    on, off = run("bp"), run("bp", meters=False)
    assert on["metrics"] == off["metrics"]
    assert off["cost"]["train_flops"]["source"] == "unavailable:meters_disabled"
    assert off["cost"]["train_wall_time"]["value"] > 0


def test_registered_formulas_for_hand_written_updates() -> None:
    m, n, b = 30, 20, 8
    W, x, e = torch.zeros(m, n), torch.randn(b, n), torch.randn(b, m)
    u, v = torch.randn(m), torch.randn(n)
    with count_flops() as c:
        W.addmm_(e.T, x)  # batched local update: 2 b m n
        W.addr_(u, v)  # rank-one update: 2 m n
        torch.outer(u, v)  # outer product: m n products
        torch.einsum("i,j->ij", u, v)  # the same, through einsum
        W @ v  # mv: 2 m n
        torch.addmv(u, W, v)  # 2 m n
        v.dot(v)  # 2 n
        x * 2.0  # elementwise: not counted
        x * x
        x * v  # broadcast, but no bigger than x: not an outer product
    expected = 2 * b * m * n + 2 * m * n + m * n + m * n + 2 * m * n + 2 * m * n + 2 * n
    assert c.total == expected
    assert c.update == expected and c.forward == 0 and c.backward == 0


def test_flop_buckets() -> None:
    lin = torch.nn.Linear(10, 5, bias=False)
    x = torch.randn(4, 10)
    with count_flops() as c:
        y = lin(x)  # forward: 2*4*10*5
        y.sum().backward()  # backward: weight grad only (x needs no grad)
        with torch.no_grad():
            lin.weight.sub_(0.1 * (y.T @ x))  # hand-written update: 2*5*4*10
    assert (c.forward, c.backward, c.update) == (400, 400, 400)


class OneOffRule(Rule):
    """A toy rule with one-off work: a begin_phase product and a solve at the first step."""

    info = RuleInfo("oneoff", "toy", "-", "none", False, False, 1, ("mlp",))
    Hparams = Hparams

    def build(self) -> None:
        self.head = torch.nn.Linear(D, C, bias=False)
        self.modules["head"] = self.head
        self.solved = False

    def begin_phase(self, phase: Phase, train_x: torch.Tensor, train_y: torch.Tensor) -> None:
        self.gram = train_x.flatten(1).T @ train_x.flatten(1)  # (D, D): 2 N D^2, once

    def train_step(self, batch: Batch) -> torch.Tensor:
        x = batch.x.flatten(1)
        with torch.no_grad():
            if not self.solved:
                self.head.weight.copy_((self.gram @ torch.ones(D, C)).T)  # 2 D^2 C, once
                self.solved = True
            return self.head(x).sum()  # 2 B D C per step

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


def test_one_off_work_is_counted_once() -> None:
    from bpfree.meters.suite import MeterSuite
    from bpfree.models import create_model

    data = synthetic_mnist()
    rule = OneOffRule(Hparams())
    rule.setup(
        create_model("mlp_1x8", (1, 28, 28)),
        C,
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
    )
    cfg = TrainConfig.build({"rule": "bp", "model": "mlp_1x8", "dataset": "mnist"})
    suite = MeterSuite(cfg, torch.device("cpu"), data)
    cost: dict[str, Any] = {}
    suite.before_phase(rule, 0, Phase("train"))
    assert not rule.solved and not hasattr(rule, "gram")  # probes ran on copies
    suite.after_train(cost, rule, 0, first_epoch=True)
    first = cost["train_flops_forward"].value + cost["train_flops_backward"].value
    assert first == 2 * N_TRAIN * D * D + 2 * D * D * C + 2 * N_TRAIN * D * C
    suite.after_train(cost, rule, 0, first_epoch=False)
    total = cost["train_flops_forward"].value + cost["train_flops_backward"].value
    assert total - first == 2 * N_TRAIN * D * C
    assert cost["train_flops_forward"].value == 2 * 2 * N_TRAIN * D * C  # the head calls
