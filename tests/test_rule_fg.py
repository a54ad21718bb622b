"""Forward gradient: the update is the forward-mode directional derivative times the tangent."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from bpfree.rules import Batch
from bpfree.testing.conformance import RuleCase


def _batch(case: RuleCase, n: int = 32) -> Batch:
    return case.batch(0, size=n)


def _true_gradient(rule: Any, batch: Batch) -> list[torch.Tensor]:
    """The reference, by reverse mode (only here, in the test)."""
    params = list(rule.net.parameters())
    loss = F.cross_entropy(rule.net(batch.x), batch.y)
    return list(torch.autograd.grad(loss, params))


def test_one_tangent_update_is_directional_derivative_times_tangent() -> None:
    case = RuleCase("fg", "mlp_2x8", {"optimizer": "sgd", "momentum": 0.0})
    rule = case.make()
    batch = _batch(case)
    grad = _true_gradient(rule, batch)
    state = rule.generator.get_state()
    v = [torch.randn(p.shape, generator=rule.generator) for p in rule.net.parameters()]
    rule.generator.set_state(state)  # the rule draws the same tangent
    rule.train_step(batch)
    d = sum((g * t).sum() for g, t in zip(grad, v, strict=True))  # grad f . v
    for p, t in zip(rule.net.parameters(), v, strict=True):
        torch.testing.assert_close(p.grad, d * t, rtol=1e-4, atol=1e-6)


def test_projection_onto_a_full_basis_of_tangents_is_the_true_gradient() -> None:
    """With as many tangents as parameters, V (V^T V)^-1 d is exactly grad f."""
    case = RuleCase("fg", "mlp_1x2", {"combine": "project"})
    rule = case.make()
    n = sum(p.numel() for p in rule.net.parameters())
    rule = RuleCase("fg", "mlp_1x2", {"combine": "project", "tangents": n}).make()
    batch = _batch(case)
    grad = _true_gradient(rule, batch)
    rule.train_step(batch)
    for p, g in zip(rule.net.parameters(), grad, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-5)


def test_mean_of_tangents_is_unbiased() -> None:
    """The mean of many one-tangent forward gradients approaches grad f (cosine > 0.9)."""
    case = RuleCase("fg", "mlp_1x2", {"tangents": 2000})
    rule = case.make()
    batch = _batch(case)
    grad = torch.cat([g.flatten() for g in _true_gradient(rule, batch)])
    rule.train_step(batch)
    est = torch.cat([p.grad.flatten() for p in rule.net.parameters()])
    assert F.cosine_similarity(est, grad, dim=0) > 0.9


def test_batchnorm_network_uses_dual_numbers_with_the_same_derivative() -> None:
    """cnn_3block updates BatchNorm statistics in place: dual numbers, same d as reverse mode."""
    case = RuleCase("fg", "cnn_3block", {"optimizer": "sgd", "momentum": 0.0})
    rule = case.make()
    assert rule.dual_numbers
    batch = _batch(case, 8)
    rule.train()
    snapshot = {k: v.clone() for k, v in rule.net.state_dict().items()}
    grad = _true_gradient(rule, batch)  # also moves the running statistics: put them back
    rule.net.load_state_dict(snapshot)
    state = rule.generator.get_state()
    v = [torch.randn(p.shape, generator=rule.generator) for p in rule.net.parameters()]
    rule.generator.set_state(state)
    rule.train_step(batch)
    d = sum((g * t).sum() for g, t in zip(grad, v, strict=True))
    for p, t in zip(rule.net.parameters(), v, strict=True):
        torch.testing.assert_close(p.grad, d * t, rtol=1e-3, atol=1e-5)


def test_fg_guess_projects_the_global_gradient_on_each_local_guess() -> None:
    """G_j = <grad_j L, g_j> / |g_j|^2 g_j, with grad_j L by reverse mode here (the reference)."""
    case = RuleCase("fg_guess", "mlp_2x8", {"weight_decay": 0.0})
    rule = case.make()
    batch = _batch(case)
    blocks, y = rule.model.blocks, batch.y
    full = F.cross_entropy(rule.head(rule.model(batch.x)), y)
    global_grads = [
        torch.autograd.grad(full, list(b.parameters()), retain_graph=True) for b in blocks
    ]
    expected = []
    h = batch.x
    for j, block in enumerate(blocks):
        a = block(h)
        guess = torch.autograd.grad(F.cross_entropy(rule.aux[j](a), y), list(block.parameters()))
        s = sum((g * t).sum() for g, t in zip(global_grads[j], guess, strict=True))
        norm2 = sum(t.pow(2).sum() for t in guess)
        expected.append([t * s / (norm2 + rule.hp.eps_norm) for t in guess])
        h = a.detach()
    head_grad = torch.autograd.grad(F.cross_entropy(rule.head(h), y), list(rule.head.parameters()))
    rule.train_step(batch)
    for block, want in zip(blocks, expected, strict=True):
        for p, w in zip(block.parameters(), want, strict=True):
            torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-7)
    for p, w in zip(rule.head.parameters(), head_grad, strict=True):
        torch.testing.assert_close(p.grad, w)


@pytest.mark.parametrize(("groups", "tangents"), [(1, 1), (3, 1), (8, 1), (50, 1), (3, 3)])
def test_fg_local_update_is_the_linear_vjp_of_the_grouped_activity_forward_gradient(
    groups: int, tangents: int
) -> None:
    """Block j's linear map gets vjp(z -> W x + b, g_z / B) with g_z[i, k] = d[i, g(k)] u[i, k]
    relu'(z[i, k]), d[i, g] = grad_{a[i], group g} l[i] . (relu'(z) u)[i, group g]: the reference
    by reverse mode (only here, in the test). Groups are contiguous, of size ceil(8 / G); G = 50
    is capped at the width, 8. With k tangents, g_z is the mean of k such estimates."""
    case = RuleCase("fg_local", "mlp_2x8", {"groups": groups, "tangents": tangents})
    rule = case.make()
    batch = _batch(case)
    state = rule.generator.get_state()
    expected, h = [], batch.x
    for j, block in enumerate(rule.model.blocks):
        params = list(block.parameters())
        z = block.linear(h.flatten(1))
        a = torch.relu(z)
        per_sample = F.cross_entropy(rule.aux[j](a), batch.y, reduction="none")
        grad_a = torch.autograd.grad(per_sample.sum(), a, retain_graph=True)[0]
        keep = (z > 0).float()
        size = -(-z.shape[1] // min(groups, z.shape[1]))
        g_z = torch.zeros_like(z)
        for _ in range(tangents):
            u = torch.randn(z.shape, generator=rule.generator)
            for lo in range(0, z.shape[1], size):
                part = slice(lo, lo + size)
                d = (grad_a[:, part] * keep[:, part] * u[:, part]).sum(1, keepdim=True)
                g_z[:, part] += d * u[:, part] * keep[:, part] / tangents
        block_grads = torch.autograd.grad(z, params, grad_outputs=g_z / z.shape[0])
        h = a.detach()
        local = F.cross_entropy(rule.aux[j](h), batch.y)
        aux_grads = torch.autograd.grad(local, list(rule.aux[j].parameters()))
        expected.append((block_grads, aux_grads))
    rule.generator.set_state(state)
    rule.train_step(batch)
    for j, (block_grads, aux_grads) in enumerate(expected):
        for p, w in zip(rule.model.blocks[j].parameters(), block_grads, strict=True):
            torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-7)
        for p, w in zip(rule.aux[j].parameters(), aux_grads, strict=True):
            torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-7)


def test_fg_local_one_group_per_unit_is_the_local_gradient_times_u_squared() -> None:
    """With a group per unit, block j's forward gradient is grad_z l_j * u^2: its mean over many
    draws is the true local gradient (here: one draw, checked against that identity)."""
    case = RuleCase("fg_local", "mlp_1x8", {"groups": 8})
    rule = case.make()
    batch = _batch(case)
    block = rule.model.blocks[0]
    state = rule.generator.get_state()
    z = block.linear(batch.x.flatten(1))
    u = torch.randn(z.shape, generator=rule.generator)
    loss = F.cross_entropy(rule.aux[0](torch.relu(z)), batch.y)
    (grad_z,) = torch.autograd.grad(loss, z)  # includes the 1 / B of the mean
    want = torch.autograd.grad(z, block.linear.weight, grad_outputs=grad_z * u * u)[0]
    rule.generator.set_state(state)
    rule.train_step(batch)
    torch.testing.assert_close(block.linear.weight.grad, want, rtol=1e-4, atol=1e-7)


def test_fg_local_many_tangents_approach_the_local_gradient() -> None:
    """One group, 2000 tangents: the averaged activity forward gradient of block 0 points along
    the true gradient of its local loss (cosine > 0.95); one tangent does not."""
    case = RuleCase("fg_local", "mlp_1x8", {"groups": 1, "tangents": 2000})
    rule = case.make()
    batch = _batch(case)
    block = rule.model.blocks[0]
    loss = F.cross_entropy(rule.aux[0](block(batch.x)), batch.y)
    (want,) = torch.autograd.grad(loss, block.linear.weight)
    rule.train_step(batch)
    cosine = F.cosine_similarity(block.linear.weight.grad.flatten(), want.flatten(), dim=0)
    assert cosine > 0.95
    one = RuleCase("fg_local", "mlp_1x8", {"groups": 1}).make()
    one.train_step(batch)
    got = one.model.blocks[0].linear.weight.grad.flatten()
    assert F.cosine_similarity(got, want.flatten(), dim=0) < 0.95
