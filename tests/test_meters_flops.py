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
    evals = N_VAL + N_TEST
    assert cost["eval_flops"]["value"] == pytest.approx(
        2 * evals * (D * H + H * H + H * C), rel=0.01
    )
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
