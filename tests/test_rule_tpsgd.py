"""tpSGD: its update against the formula of its card, and its locality (no layer's update
depends on the layers above it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bpfree.errors import ConfigError
from bpfree.testing.conformance import RuleCase

SGD = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "lr": 0.2}


@pytest.mark.parametrize("loss", ["l2", "l1"])
def test_tpsgd_update_equals_its_formula(loss: str) -> None:
    case = RuleCase("tpsgd", "mlp_2x6", {**SGD, "loss": loss})
    rule = case.make()
    batch = case.batch(0, size=16)
    layers = [*(b.linear for b in rule.model.blocks), rule.head]
    ws = [
        (lay.weight.detach().double().clone(), lay.bias.detach().double().clone()) for lay in layers
    ]
    x, n = batch.x.flatten(1).double(), batch.x.shape[0]
    onehot = F.one_hot(batch.y, 10).double()
    want, a = [], x
    for k in range(2):
        w, b = ws[k]
        h = (a @ w.T + b).clamp_min(0)
        residual = h - onehot @ rule.targets[k].double().T
        delta = (residual.sign() if loss == "l1" else residual) * (h > 0)
        want.append((w - 0.2 * delta.T @ a / n, b - 0.2 * delta.mean(0)))
        a = h
    w, b = ws[2]
    e = torch.softmax(a @ w.T + b, 1) - onehot
    want.append((w - 0.2 * e.T @ a / n, b - 0.2 * e.mean(0)))
    rule.train()
    rule.train_step(batch)
    for k, (layer, (w, b)) in enumerate(zip(layers, want, strict=True)):
        torch.testing.assert_close(layer.weight.double(), w, atol=1e-6, rtol=1e-5, msg=f"W{k}")
        torch.testing.assert_close(layer.bias.double(), b, atol=1e-6, rtol=1e-5, msg=f"b{k}")


def test_a_tpsgd_layer_update_ignores_every_layer_above_it() -> None:
    case = RuleCase("tpsgd", "mlp_3x8", SGD)
    first, second = case.make(), case.make()
    with torch.no_grad():  # different weights above layer 1
        second.model.blocks[1].linear.weight.mul_(-3.0)
        second.model.blocks[2].linear.weight.add_(1.0)
        second.head.weight.mul_(5.0)
    batch = case.batch(0)
    for rule in (first, second):
        rule.train()
        rule.train_step(batch)
    torch.testing.assert_close(
        first.model.blocks[0].linear.weight, second.model.blocks[0].linear.weight
    )


def test_tpsgd_refuses_a_body_with_dropout() -> None:
    with pytest.raises(ConfigError, match="dropout"):
        RuleCase("tpsgd", "mlp_2x8_drop10").make()
