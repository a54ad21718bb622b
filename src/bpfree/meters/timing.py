"""Wall-clock and process CPU time of a window; the device is synchronised at both edges."""

from __future__ import annotations

import time

import torch

from bpfree.meters.base import Reading, add


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class WallTimer:
    """``time.perf_counter`` over the window, after a device synchronisation at both edges."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device
        self._t0 = 0.0

    def available(self) -> str | None:
        return None

    def start(self) -> None:
        synchronize(self.device)
        self._t0 = time.perf_counter()

    def stop(self) -> Reading:
        synchronize(self.device)
        return Reading(time.perf_counter() - self._t0, "s", "time.perf_counter")

    combine = staticmethod(add)


class CpuTimer:
    """``time.process_time`` (user + system CPU of this process, all threads) over the window."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device
        self._t0 = 0.0

    def available(self) -> str | None:
        return None

    def start(self) -> None:
        synchronize(self.device)
        self._t0 = time.process_time()

    def stop(self) -> Reading:
        synchronize(self.device)
        return Reading(
            time.process_time() - self._t0,
            "s",
            "time.process_time",
            "CPU seconds of all threads of the training process",
        )

    combine = staticmethod(add)
