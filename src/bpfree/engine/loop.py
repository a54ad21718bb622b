"""The two loops inside the measurement windows: one training epoch, and one evaluation.

Nothing here synchronises the host per step (no ``.item()``): the losses are summed on the
device and read once, after the window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bpfree.data import DataBundle
from bpfree.rules import Batch, Rule
from bpfree.signals import raise_if_terminated


@torch.no_grad()
def evaluate(rule: Rule, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``rule.predict`` on (x, y)."""
    rule.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    loss = torch.zeros((), device=x.device)
    for start in range(0, x.shape[0], batch_size):
        logits = rule.predict(x[start : start + batch_size])  # (b, C)
        target = y[start : start + batch_size]
        correct += (logits.argmax(dim=1) == target).sum()
        loss += F.cross_entropy(logits, target, reduction="sum")
    n = max(int(x.shape[0]), 1)
    return correct.item() / n, loss.item() / n


@dataclass
class EpochStats:
    """What one training window did; tensors stay on the device until read after it."""

    loss_sum: torch.Tensor  # summed step losses
    first_loss: torch.Tensor | None  # the first step's loss
    steps: int
    samples: int


def train_epoch(
    rule: Rule,
    data: DataBundle,
    batches: torch.Generator,
    batch_size: int,
    device: torch.device,
    max_steps: int | None = None,
    seconds: float | None = None,
) -> EpochStats:
    """One pass over the training set in a fresh random order: the body of a timed window.

    ``max_steps`` and ``seconds`` cut the pass short (a compute ceiling); the clock is read
    before each step without synchronising the device. Nothing here syncs the host.
    """
    n = data.train_x.shape[0]
    perm = torch.randperm(n, generator=batches).to(device)  # (n,)
    deadline = None if seconds is None else time.perf_counter() + seconds
    stats = EpochStats(torch.zeros((), device=device), None, 0, 0)
    for start in range(0, n, batch_size):
        raise_if_terminated()  # a SIGTERM whose own interrupt was dropped in a finalizer
        if max_steps is not None and stats.steps >= max_steps:
            break
        if deadline is not None and time.perf_counter() >= deadline:
            break
        idx = perm[start : start + batch_size]  # (b,)
        loss = rule.train_step(Batch(data.train_x[idx], data.train_y[idx], idx))
        if stats.first_loss is None:
            stats.first_loss = loss
        stats.loss_sum += loss
        stats.steps += 1
        stats.samples += int(idx.shape[0])
    return stats
