"""Memory meters: peak resident memory of the training process, GPU allocator peaks, and the
peak bytes of live tensors during one training step.

* ``PeakRssMeter``: peak resident set size (RSS) above the pre-training baseline, measured in the
  process that trains. Where ``/proc/self/clear_refs`` is writable the kernel's high-water mark
  (VmHWM) is reset at the window start and read at its end (exact, free); otherwise a thread
  samples VmRSS every few milliseconds (can miss short spikes; says so in the note).
* ``CudaMemoryMeter``: ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` over the
  window, peak stats reset at its start.
* ``TensorMemoryTracker``: the peak bytes of live tensor storage during a block of code, seen
  through a ``TorchDispatchMode``. Used by the trainer on one probe step outside the timed
  window; the same definition on CPU and GPU, so it is the fair cross-device figure for "this
  rule stores no activations".
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bpfree.meters.base import Reading, peak

PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str, status: Path = PROC_STATUS) -> int | None:
    try:
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss() -> int | None:
    """Resident set size of this process in bytes (None where /proc is absent)."""
    return _status_bytes("VmRSS")


def _clear_refs_works() -> bool:
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("5")  # "5": reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


class PeakRssMeter:
    """Peak RSS of this process in the window, minus a baseline taken before training."""

    def __init__(
        self,
        name: str = "peak_rss_delta",
        *,
        baseline: int | None = None,
        method: str | None = None,
        interval_s: float = 0.005,
    ) -> None:
        self.name = name
        self.baseline = current_rss() if baseline is None else baseline
        if method is None:
            method = "clear_refs" if _clear_refs_works() else "sampling"
        self.method = method
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._max = 0

    def available(self) -> str | None:
        if current_rss() is None:
            return "unavailable:no_procfs"
        return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = current_rss()
            if rss is not None and rss > self._max:
                self._max = rss

    def start(self) -> None:
        if self.method == "clear_refs":
            try:
                with open(CLEAR_REFS, "w") as f:
                    f.write("5")
                return
            except OSError:  # no longer writable (e.g. a sandbox changed): sample instead
                self.method = "sampling"
        self._max = current_rss() or 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="bpfree-rss", daemon=True)
        self._thread.start()

    def stop(self) -> Reading:
        if self.baseline is None or self.available() is not None:
            return Reading.unavailable("B", "no_procfs")
        if self.method == "clear_refs":
            high = _status_bytes("VmHWM")
            if high is None:
                return Reading.unavailable("B", "no_procfs")
            source, how = "procfs:VmHWM", "kernel high-water mark reset via /proc/self/clear_refs"
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            high = max(self._max, current_rss() or 0)
            source = "procfs:VmRSS_sampled"
            how = f"VmRSS sampled every {self.interval_s * 1e3:.0f} ms (may miss short spikes)"
        return Reading(
            float(high - self.baseline),
            "B",
            source,
            f"peak RSS of the training process above the pre-training baseline of "
            f"{self.baseline} B; {how}",
        )

    combine = staticmethod(peak)


class CudaMemoryMeter:
    """``torch.cuda.max_memory_allocated`` or ``max_memory_reserved`` over the window."""

    def __init__(self, name: str, device: torch.device, kind: str = "allocated") -> None:
        self.name = name
        self.device = device
        self.kind = kind  # "allocated" (live tensors) or "reserved" (held by the allocator)

    def available(self) -> str | None:
        return None if self.device.type == "cuda" else "unavailable:no_gpu"

    def start(self) -> None:
        if self.device.type == "cuda" and self.kind == "allocated":
            torch.cuda.reset_peak_memory_stats(self.device)  # resets both peaks

    def stop(self) -> Reading:
        reason = self.available()
        if reason is not None:
            return Reading.unavailable("B", reason)
        torch.cuda.synchronize(self.device)
        fn = (
            torch.cuda.max_memory_allocated
            if self.kind == "allocated"
            else (torch.cuda.max_memory_reserved)
        )
        return Reading(
            float(fn(self.device)),
            "B",
            f"torch.cuda.max_memory_{self.kind}",
            "peak over the training window, including the dataset held on the GPU",
        )

    combine = staticmethod(peak)


def _storages(tensors: Iterable[Any]) -> Iterable[torch.UntypedStorage]:
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.layout == torch.strided:
            try:
                storage = t.untyped_storage()
                storage.data_ptr()  # forward AD's zero tangents (_efficientzerotensor) have none
            except (RuntimeError, NotImplementedError):  # tensors without storage: no memory
                continue
            yield storage


def storage_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once)."""
    seen: dict[int, int] = {}
    for s in _storages(tensors):
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


class TensorMemoryTracker(TorchDispatchMode):
    """Peak bytes of live tensor storage while the mode is active.

    ``baseline`` tensors (the rule's parameters, gradients, optimizer state, ...) count as live
    from the start; every storage an operator returns is added when first seen and removed when
    freed (a weakref finaliser on the storage). Kernel-internal scratch space is not seen.

    ``mark()`` opens a window (one training step); ``window_peak()`` is then the peak bytes of
    the storages created in the window that did not outlive it: the step's activations and
    temporaries, without the gradients and optimizer state it leaves behind.
    """

    def __init__(self, baseline: Iterable[Any] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: dict[int, Any] = {}  # storage data_ptr -> finaliser
        self._next_id = 0
        self._events: list[tuple[int, int]] = []  # (storage id, +-bytes) since mark()
        self._window: set[int] = set()  # ids created since mark() and still alive
        self._marked = False
        for s in _storages(baseline):
            self._track(s)
        self.baseline_bytes = self.live

    def mark(self) -> None:
        self._events, self._window, self._marked = [], set(), True

    def window_peak(self) -> int:
        """Peak bytes of the storages created since ``mark()`` that are freed again."""
        survivors, live, top = set(self._window), 0, 0
        for sid, delta in self._events:
            if sid not in survivors:
                live += delta
                top = max(top, live)
        return top

    def _free(self, key: int, sid: int, nbytes: int) -> None:
        if self._seen.pop(key, None) is not None:
            self.live -= nbytes
            if sid in self._window:
                self._window.discard(sid)
                self._events.append((sid, -nbytes))

    def _track(self, storage: torch.UntypedStorage) -> None:
        nbytes = storage.nbytes()
        key = storage.data_ptr()
        if nbytes == 0 or key in self._seen:
            return
        sid, self._next_id = self._next_id, self._next_id + 1
        self._seen[key] = weakref.finalize(storage, self._free, key, sid, nbytes)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        if self._marked:
            self._window.add(sid)
            self._events.append((sid, nbytes))

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for s in _storages(tree_flatten(out)[0]):
            self._track(s)
        return out

    def __exit__(self, *exc: Any) -> Any:
        result = super().__exit__(*exc)
        for fin in self._seen.values():
            fin.detach()  # later frees no longer concern this tracker
        self._seen.clear()
        return result
