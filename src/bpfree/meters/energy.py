"""Energy meters: hardware counters only; no counter means null with the reason, never 0.

* ``RaplMeter`` (CPU): Linux RAPL package counters ``/sys/class/powercap/intel-rapl:<n>/energy_uj``
  (AMD exposes them under the same name). Wrap-around is handled with ``max_energy_range_uj``;
  a thread reads the counters every ``poll_s`` so a long window cannot wrap twice unseen.
  Package domains only (``intel-rapl:0``, not the ``intel-rapl:0:0`` sub-zones, which are parts
  of the package and would double count).
* ``NvmlEnergy`` (GPU): NVML's cumulative ``nvmlDeviceGetTotalEnergyConsumption`` (mJ, Volta and
  newer) through the ``nvidia-ml-py`` package (imported as ``pynvml``, lazily). Idle power is
  sampled with ``nvmlDeviceGetPowerUsage`` before training, outside every window; the meters
  ``gpu_energy`` (raw), ``gpu_energy_above_idle`` and ``gpu_idle_power`` share one session.
  The counter covers the whole board: never run two measured trials on one GPU at once.
  A run whose windows (one per epoch) add up to less than ``min_window_s`` (1 s) reads as
  "window too short", not as 0; shorter single windows are summed, not withheld.
"""

from __future__ import annotations

import importlib
import re
import statistics
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from bpfree.meters.base import Reading, add
from bpfree.meters.timing import synchronize

POWERCAP = Path("/sys/class/powercap")
_PACKAGE = re.compile(r"^intel-rapl:\d+$")


def _read_int(path: Path) -> int:
    return int(path.read_text())


class RaplMeter:
    """CPU package energy over the window, from the RAPL counters in sysfs."""

    def __init__(
        self,
        name: str = "cpu_energy",
        *,
        root: str | Path = POWERCAP,
        poll_s: float = 10.0,
        min_window_s: float = 0.01,
    ) -> None:
        self.name = name
        self.root = Path(root)
        self.poll_s = poll_s
        self.min_window_s = min_window_s
        self._zones: list[Path] = []
        self._ranges: list[int] = []
        self._reason = self._probe()
        self._last: list[int] = []
        self._total_uj = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def _probe(self) -> str | None:
        try:
            zones = sorted(p for p in self.root.iterdir() if _PACKAGE.match(p.name))
        except OSError:
            return "unavailable:no_powercap"
        if not zones:
            return "unavailable:no_powercap"
        try:
            for z in zones:
                _read_int(z / "energy_uj")
                self._ranges.append(_read_int(z / "max_energy_range_uj"))
        except PermissionError:
            return "unavailable:permission_denied"
        except (OSError, ValueError):
            return "unavailable:counter_not_supported"
        self._zones = zones
        return None

    def domains(self) -> list[str]:
        names = []
        for z in self._zones:
            try:
                names.append(f"{z.name}={(z / 'name').read_text().strip()}")
            except OSError:
                names.append(z.name)
        return names

    def available(self) -> str | None:
        return self._reason

    def _read(self) -> list[int]:
        return [_read_int(z / "energy_uj") for z in self._zones]

    def _accumulate(self) -> None:
        now = self._read()
        with self._lock:
            for i, (a, b) in enumerate(zip(self._last, now, strict=True)):
                # The counter wraps to 0 after max_energy_range_uj.
                self._total_uj += b - a if b >= a else b + self._ranges[i] - a
            self._last = now

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._accumulate()

    def start(self) -> None:
        if self._reason is not None:
            return
        self._total_uj = 0
        self._last = self._read()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="bpfree-rapl", daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()

    def stop(self) -> Reading:
        if self._reason is not None:
            return Reading.unavailable("J", self._reason)
        seconds = time.perf_counter() - self._t0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._accumulate()
        except PermissionError:
            return Reading.unavailable("J", "permission_denied")
        if seconds < self.min_window_s:
            return Reading.unavailable(
                "J", "window_too_short", f"window {seconds:.4f} s < {self.min_window_s} s"
            )
        return Reading(
            self._total_uj / 1e6,
            "J",
            "rapl:energy_uj",
            f"RAPL package counters ({', '.join(self.domains())}); whole CPU packages, "
            "including other processes",
        )

    combine = staticmethod(add)


def import_pynvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


class NvmlEnergy:
    """One NVML session on the training GPU, shared by the GPU energy meters."""

    def __init__(
        self,
        gpu_index: int | None,
        *,
        module: ModuleType | None = None,
        idle_seconds: float = 1.0,
        idle_samples: int = 10,
        min_window_s: float = 1.0,
    ) -> None:
        self.gpu_index = gpu_index
        self.min_window_s = min_window_s
        self.idle_w: float | None = None
        self.idle_note = ""
        self.name = ""
        self._nvml: Any = None
        self._handle: Any = None
        self.reason = self._open(module)
        if self.reason is None and idle_samples > 0:
            self._sample_idle(idle_seconds, idle_samples)

    def _open(self, module: ModuleType | None) -> str | None:
        if self.gpu_index is None:
            return "unavailable:no_gpu"
        nvml = module if module is not None else import_pynvml()
        if nvml is None:
            return "unavailable:nvml_not_installed"
        self._nvml = nvml
        try:
            nvml.nvmlInit()
            self._handle = self._find_handle(nvml)
            name = nvml.nvmlDeviceGetName(self._handle)
            self.name = name.decode() if isinstance(name, bytes) else str(name)
            nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except Exception as exc:
            return self._reason(exc)
        return None

    def _find_handle(self, nvml: Any) -> Any:
        """The NVML handle of the torch GPU (by UUID, which survives CUDA_VISIBLE_DEVICES)."""
        if torch.cuda.is_available():
            uuid = getattr(torch.cuda.get_device_properties(self.gpu_index), "uuid", None)
            if uuid is not None:
                text = str(uuid)
                text = text if text.startswith("GPU-") else f"GPU-{text}"
                try:
                    return nvml.nvmlDeviceGetHandleByUUID(text)
                except Exception:
                    pass
        return nvml.nvmlDeviceGetHandleByIndex(self.gpu_index)

    def _reason(self, exc: Exception) -> str:
        nvml = self._nvml
        code = getattr(exc, "value", None)
        if code is not None and code == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", object()):
            return "unavailable:counter_not_supported"
        if code is not None and code == getattr(nvml, "NVML_ERROR_NO_PERMISSION", object()):
            return "unavailable:permission_denied"
        return f"unavailable:nvml_error ({exc})"

    def read_mj(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def _sample_idle(self, seconds: float, samples: int) -> None:
        values = []
        try:
            for _ in range(samples):
                values.append(self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0)  # mW
                time.sleep(seconds / samples)
        except Exception as exc:
            self.idle_note = f"idle power not measured: {self._reason(exc)}"
            return
        self.idle_w = statistics.median(values)
        self.idle_note = (
            f"median of {samples} nvmlDeviceGetPowerUsage samples over {seconds:g} s "
            "before training"
        )

    def meters(self, device: torch.device | None = None) -> list[Any]:
        return [
            NvmlEnergyMeter(self, "gpu_energy", device),
            NvmlEnergyMeter(self, "gpu_energy_above_idle", device, above_idle=True),
            IdlePowerMeter(self),
        ]


class NvmlEnergyMeter:
    """GPU board energy over the window (raw, or above the idle power sampled before the run)."""

    def __init__(
        self,
        session: NvmlEnergy,
        name: str,
        device: torch.device | None = None,
        *,
        above_idle: bool = False,
    ) -> None:
        self.session = session
        self.name = name
        self.device = device
        self.above_idle = above_idle
        self._e0 = 0
        self._t0 = 0.0

    def available(self) -> str | None:
        if self.session.reason is not None:
            return self.session.reason
        if self.above_idle and self.session.idle_w is None:
            return "unavailable:no_idle_power"
        return None

    def start(self) -> None:
        if self.available() is not None:
            return
        if self.device is not None:
            synchronize(self.device)
        self._e0 = self.session.read_mj()
        self._t0 = time.perf_counter()

    def stop(self) -> Reading:
        reason = self.available()
        if reason is not None:
            return Reading.unavailable("J", reason)
        if self.device is not None:
            synchronize(self.device)
        seconds = time.perf_counter() - self._t0
        joules = (self.session.read_mj() - self._e0) / 1000.0
        s = self.session
        where = f"GPU {s.gpu_index} ({s.name}), whole board"
        if not self.above_idle:
            return Reading(joules, "J", "nvml:total_energy_consumption", where, seconds)
        assert s.idle_w is not None
        return Reading(
            joules - s.idle_w * seconds,
            "J",
            "nvml:total_energy_consumption-idle",
            f"{where}; minus idle power {s.idle_w:.1f} W x the measured time (window_s)",
            seconds,
        )

    combine = staticmethod(add)  # the windows' energies and seconds both add up

    def settle(self, total: Reading) -> Reading:
        """The run's reading: withheld when all its windows together are too short to trust.

        Each window (an epoch) may be short on a fast GPU; their sum is what the counter's
        coarseness has to be weighed against, so the minimum applies to the run's total. Each
        window's share is off by up to one step of the counter, an error without a sign that
        averages out over a run's windows; the 2026-12-04 H200 runs withheld whole runs'
        energy because one epoch lasted under 1 s.
        """
        seconds, floor = total.window_s, self.session.min_window_s
        if total.value is None or seconds is None or seconds >= floor:
            return total
        return Reading.unavailable(
            "J",
            "window_too_short",
            f"measured {seconds:.3f} s in all < {floor:g} s: NVML's counter is too coarse",
        )


class IdlePowerMeter:
    """The idle power used for ``gpu_energy_above_idle`` (constant over the run)."""

    name = "gpu_idle_power"

    def __init__(self, session: NvmlEnergy) -> None:
        self.session = session

    def available(self) -> str | None:
        if self.session.reason is not None:
            return self.session.reason
        return None if self.session.idle_w is not None else "unavailable:no_idle_power"

    def start(self) -> None:
        pass

    def stop(self) -> Reading:
        reason = self.available()
        if reason is not None:
            return Reading.unavailable("W", reason, self.session.idle_note)
        assert self.session.idle_w is not None
        return Reading(self.session.idle_w, "W", "nvml:power_usage", self.session.idle_note)

    @staticmethod
    def combine(a: Reading | None, b: Reading) -> Reading:
        return a if a is not None else b  # the first run's idle power (kept across resumes)
