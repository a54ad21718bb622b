"""The machine's measured float32 matmul peak, the yardstick for FLOP/s utilisation.

Measured once per (device, torch version, thread count), by timing repeated square float32
``torch.mm`` calls and keeping the best rate, then cached as JSON in the user cache dir
(``bpfree.answers.user_cache_dir()/matmul_peak.json``). ``bpfree env --refresh`` remeasures.
On a shared machine the figure is only as good as the quiet moment it was taken in: the cache
records when it was measured and with what.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from bpfree.answers import user_cache_dir
from bpfree.hardware import cpu_model
from bpfree.meters.base import Reading
from bpfree.meters.timing import synchronize

CACHE_NAME = "matmul_peak.json"


def cache_path() -> Path:
    return user_cache_dir() / CACHE_NAME


def peak_key(device: torch.device) -> str:
    if device.type == "cuda":
        what = f"cuda:{torch.cuda.get_device_name(device)}"
    else:
        what = f"cpu:{cpu_model()}:threads={torch.get_num_threads()}"
    return f"{what}|torch={torch.__version__}"


def measure_matmul_peak(
    device: torch.device, *, size: int | None = None, seconds: float = 0.5
) -> dict[str, Any]:
    """Best FLOP/s of ``size`` x ``size`` float32 matmuls over about ``seconds``."""
    n = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    flops = 2 * n**3
    torch.mm(a, b)  # warm-up (kernel selection, page faults)
    synchronize(device)
    best, runs, t_end = 0.0, 0, time.perf_counter() + seconds
    while time.perf_counter() < t_end or runs < 3:
        t0 = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = max(best, flops / (time.perf_counter() - t0))
        runs += 1
    return {
        "flops_per_s": best,
        "method": f"best of {runs} torch.mm float32 {n}x{n}",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def matmul_peak(
    device: torch.device, *, refresh: bool = False, measure: bool = True
) -> dict[str, Any] | None:
    """The cached peak for this device (measured now if missing and ``measure``), or None."""
    path = cache_path()
    cache = _load(path)
    key = peak_key(device)
    if key in cache and not refresh:
        return {**cache[key], "cached": True}
    if not measure:
        return None
    entry = measure_matmul_peak(device)
    cache[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=2) + "\n")
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache only means remeasuring next time
    return {**entry, "cached": False}


def peak_reading(peak: dict[str, Any] | None) -> Reading:
    if peak is None:
        return Reading.unavailable("FLOP/s", "peak_not_measured")
    return Reading(
        float(peak["flops_per_s"]),
        "FLOP/s",
        "measured:matmul_peak",
        f"{peak['method']}, measured {peak['measured_at']}",
    )
