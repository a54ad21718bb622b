"""The two loops inside the measurement windows: one training epoch, and one evaluation.

Nothing here synchronises the host per step (no ``.item()``): the losses are summed on the
device and read once, after the window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bpfree.data import DataBundle
from bpfree.rules import Batch, Rule


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


def train_epoch(
    rule: Rule, data: DataBundle, batches: torch.Generator, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """One pass over the training set in a fresh random order: the body of a timed window.

    Returns the summed (detached) step losses and the step count; nothing here syncs the host.
    """
    n = data.train_x.shape[0]
    perm = torch.randperm(n, generator=batches).to(device)  # (n,)
    loss_sum = torch.zeros((), device=device)
    steps = 0
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]  # (b,)
        loss_sum += rule.train_step(Batch(data.train_x[idx], data.train_y[idx], idx))
        steps += 1
    return loss_sum, steps
