"""Forward gradient: the update is the forward-mode directional derivative times the tangent."""

from __future__ import annotations

from typing import Any

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


def test_fg_local_update_is_the_block_vjp_of_the_activity_forward_gradient() -> None:
    """Block j gets vjp(block_j, d * u / B), d[i] = grad_{a[i]} l[i] . u[i] (reverse mode here)."""
    case = RuleCase("fg_local", "mlp_2x8")
    rule = case.make()
    batch = _batch(case)
    state = rule.generator.get_state()
    expected, h = [], batch.x
    for j, block in enumerate(rule.model.blocks):
        params = list(block.parameters())
        a = block(h)
        u = torch.randn(a.shape, generator=rule.generator)
        per_sample = F.cross_entropy(rule.aux[j](a), batch.y, reduction="none")
        grad_a = torch.autograd.grad(per_sample.sum(), a, retain_graph=True)[0]
        d = (grad_a * u).sum(1, keepdim=True)
        block_grads = torch.autograd.grad(a, params, grad_outputs=d * u / a.shape[0])
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
