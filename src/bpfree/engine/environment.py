"""What a run ran on: hardware, software versions, git SHA (for ``env.json``)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bpfree.errors import ConfigError, unknown
from bpfree.hardware import cpu_model, memory_bytes
from bpfree.meters.check import meter_status
from bpfree.meters.peak import cache_path, matmul_peak
from bpfree.version import __version__


def git_sha() -> str | None:
    """The commit of the bpfree checkout this code runs from, if it is one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def resolve_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise unknown("device", name, ["auto", "cpu", "cuda"])
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def describe(device: torch.device | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "bpfree": __version__,
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": memory_bytes(),
        "cuda_available": torch.cuda.is_available(),
    }
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            info["gpu"] = props.name
            info["gpu_memory_bytes"] = props.total_memory
            info["cuda"] = torch.version.cuda
    return info


def env_report(device: torch.device, *, refresh: bool = False) -> dict[str, Any]:
    """``bpfree env``: :func:`describe` plus the matmul peak and each meter's status here."""
    info = describe(device)
    info["matmul_peak"] = matmul_peak(device, refresh=refresh)
    info["matmul_peak_cache"] = str(cache_path())
    info["meters"] = dict(meter_status(device))
    return info


def format_env(info: dict[str, Any]) -> str:
    lines = ["Hardware and software:"]
    for key, value in info.items():
        if key in ("matmul_peak", "matmul_peak_cache", "meters"):
            continue
        lines.append(f"  {key:<18} {value}")
    peak = info.get("matmul_peak")
    if peak:
        state = "cached" if peak.get("cached") else "measured now"
        lines.append(
            f"Matmul peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['method']}, "
            f"{state}, measured {peak['measured_at']}; cache {info['matmul_peak_cache']})"
        )
    lines.append("Meters:")
    for name, status in info["meters"].items():
        lines.append(f"  {name:<34} {status}")
    return "\n".join(lines)
