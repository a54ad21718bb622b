"""Sparsemax and its loss — Martins & Astudillo 2016, arXiv 1602.02068 (used by CaFo's `sl`).

sparsemax(z) = argmin_{p in simplex} ||p - z||^2 = max(z - tau(z), 0), with tau chosen so the
result sums to 1: sort z descending (z_(1) >= ... >= z_(C)), k(z) = max{k : 1 + k z_(k) >
sum_{j<=k} z_(j)}, tau = (sum_{j<=k(z)} z_(j) - 1) / k(z).

Sparsemax loss: L(z, y) = -z_y + 1/2 sum_{j in S(z)} (z_j^2 - tau^2) + 1/2, S(z) the support;
it is convex, >= 0, and its gradient is sparsemax(z) - onehot(y).
"""

from __future__ import annotations

from typing import Any

import torch


def _tau(z: torch.Tensor) -> torch.Tensor:
    """The threshold tau(z) of every row of z (B, C), shape (B, 1)."""
    zs, _ = z.sort(dim=1, descending=True)  # (B, C)
    cumsum = zs.cumsum(dim=1)  # (B, C)
    k = torch.arange(1, z.shape[1] + 1, device=z.device, dtype=z.dtype)  # (C,)
    support = (1 + k * zs) > cumsum  # (B, C): True on a prefix
    k_z = support.sum(dim=1, keepdim=True)  # (B, 1), >= 1
    return (cumsum.gather(1, k_z - 1) - 1) / k_z.to(z.dtype)


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Row-wise sparsemax of z (B, C): a probability vector, often with exact zeros."""
    return (z - _tau(z)).clamp_min(0.0)


class _SparsemaxLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tau = _tau(z)  # (B, 1)
        p = (z - tau).clamp_min(0.0)  # (B, C)
        on = p > 0
        zy = z.gather(1, y[:, None]).squeeze(1)  # (B,)
        loss = -zy + 0.5 * ((z.pow(2) - tau.pow(2)) * on).sum(dim=1) + 0.5  # (B,)
        ctx.save_for_backward(p, y)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        p, y = ctx.saved_tensors
        g = p.clone()
        g[torch.arange(y.shape[0], device=y.device), y] -= 1.0  # sparsemax(z) - onehot(y)
        return grad[:, None] * g, None


def sparsemax_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean sparsemax loss of logits z (B, C) for labels y (B,)."""
    return _SparsemaxLoss.apply(z, y).mean()
