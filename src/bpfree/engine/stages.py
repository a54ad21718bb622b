"""The pieces of a parallel run that are not its schedule (engine/pipeline.py drives them):
how a rule's units split into stages, what a stage records, and how a stage sends a tensor on
and receives one (a small header with its shape, then the payload; point to point, gloo)."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bpfree.errors import ConfigError
from bpfree.rules import Rule

HEADER = 5  # ndim and up to four sizes of the tensor a stage sends on
IN_FLIGHT = 2  # batches a stage may send ahead of its receiver


def split_units(costs: list[int], k: int) -> list[range]:
    """Contiguous ranges of ``costs`` into k non-empty parts with the smallest largest sum."""
    n = len(costs)
    if not 1 <= k <= n:
        raise ConfigError(f"cannot split {n} pipeline units into {k} stages")
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(k + 1)]  # best[j][i]: first i units in j parts
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for j in range(1, k + 1):
        for i in range(j, n + 1):
            for m in range(j - 1, i):
                value = max(best[j - 1][m], prefix[i] - prefix[m])
                if value < best[j][i]:
                    best[j][i], cut[j][i] = value, m
    bounds, i = [n], n
    for j in range(k, 0, -1):
        i = cut[j][i]
        bounds.append(i)
    bounds.reverse()
    return [range(bounds[j], bounds[j + 1]) for j in range(k)]


def unit_tensors(unit: list[nn.Module | torch.Tensor]) -> list[torch.Tensor]:
    """Every parameter and buffer of a unit's modules, and its loose tensors, in order."""
    out: list[torch.Tensor] = []
    for part in unit:
        if isinstance(part, torch.Tensor):
            out.append(part)
        else:
            out.extend(part.parameters())
            out.extend(part.buffers())
    return out


@dataclass
class StageTimes:
    """What one process did in one training window."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    wait_s: float | None = 0.0
    bytes_sent: int = 0
    sync_s: float = 0.0
    compute_s: float = 0.0  # in the rule's own step (local pipeline)
    process_cpu_s: float = 0.0  # every thread of the process (communication threads too)

    def record(self) -> dict[str, Any]:
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return {
            "wall_s": round(self.wall_s, 4),
            "busy": round(self.cpu_s / self.wall_s, 4) if self.wall_s > 0 else None,
            "wait_s": None if self.wait_s is None else round(self.wait_s, 4),
            "bytes_sent": self.bytes_sent,
            "sync_s": round(self.sync_s, 4),
            "compute_s": round(self.compute_s, 4),
            "process_cpu_s": round(self.process_cpu_s, 4),
            "peak_rss_mib": round(rss_kib / 1024, 1),
        }


class StageModule(nn.Module):
    """Units start..stop-1 of a backprop rule as one module for torch.distributed.pipelining."""

    def __init__(self, rule: Rule, units: list[list[nn.Module | torch.Tensor]], span: range):
        super().__init__()
        self.rule, self.span = [rule], span  # a list: the rule is not a submodule
        self.parts = nn.ModuleList(m for u in span for m in units[u] if isinstance(m, nn.Module))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for unit in self.span:
            h = self.rule[0].pipeline_forward(unit, h)
        return h


Pending = list[tuple[Any, torch.Tensor]]  # isend works not yet waited on, with their tensors


def send(out: torch.Tensor, dst: int, pending: Pending, times: StageTimes) -> None:
    """``out`` to process ``dst`` without waiting for it to be received; at most IN_FLIGHT
    tensors (each a header and a payload) are left in flight."""
    while len(pending) >= 2 * IN_FLIGHT:
        pending.pop(0)[0].wait()
    shape = list(out.shape) + [0] * (HEADER - 1 - out.dim())
    header = torch.tensor([out.dim(), *shape], dtype=torch.int64)
    payload = out.contiguous()
    for tensor in (header, payload):
        pending.append((dist.isend(tensor, dst=dst), tensor))
        times.bytes_sent += tensor.numel() * tensor.element_size()


def receive(src: int, device: torch.device, times: StageTimes) -> torch.Tensor:
    """The next tensor process ``src`` sends here; the wait is added to ``times.wait_s``."""
    begin = time.perf_counter()
    header = torch.empty(HEADER, dtype=torch.int64)
    dist.recv(header, src=src)
    dims = header.tolist()
    h = torch.empty(dims[1 : 1 + dims[0]], device=device)
    dist.recv(h, src=src)
    assert times.wait_s is not None
    times.wait_s += time.perf_counter() - begin
    return h
