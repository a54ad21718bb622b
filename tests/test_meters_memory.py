"""Peak-memory meters see a deliberate allocation of known size."""

from __future__ import annotations

import time

import pytest
import torch

from bpfree.meters.memory import CudaMemoryMeter, PeakRssMeter, TensorMemoryTracker

MB = 1 << 20


def _allocate_and_free(nbytes: int, hold_s: float = 0.0) -> None:
    block = torch.ones(nbytes, dtype=torch.uint8)  # ones: every page is touched (resident)
    time.sleep(hold_s)
    del block


@pytest.mark.parametrize("method", ["clear_refs", "sampling"])
def test_peak_rss_sees_allocation(method: str) -> None:
    meter = PeakRssMeter(method=method, interval_s=0.002)
    if meter.available() is not None:
        pytest.skip("RSS meter unavailable here: " + str(meter.available()))
    if method == "clear_refs":
        try:
            meter.start()
        except OSError:
            pytest.skip("/proc/self/clear_refs not writable here")
    else:
        meter.start()
    _allocate_and_free(200 * MB, hold_s=0.05 if method == "sampling" else 0.0)
    r = meter.stop()
    assert r.unit == "B" and r.measured
    assert r.value is not None and r.value >= 0.95 * 200 * MB
    assert ("VmHWM" in r.source) == (method == "clear_refs")


def test_peak_rss_combine_is_a_max() -> None:
    m = PeakRssMeter(method="sampling")
    from bpfree.meters.base import Reading

    a, b = Reading(5.0, "B", "x"), Reading(7.0, "B", "x")
    assert m.combine(m.combine(None, a), b).value == 7.0


def test_tensor_tracker_sees_allocation() -> None:
    state = [torch.zeros(1000)]  # 4000 B already live
    with TensorMemoryTracker(state) as tracker:
        assert tracker.baseline_bytes == 4000
        x = torch.empty(25 * MB, dtype=torch.uint8)
        assert tracker.live == 4000 + 25 * MB
        del x  # freed: no longer live
        assert tracker.live == 4000
        y = torch.empty(MB, dtype=torch.uint8)
        _ = y[:10] + 1  # a view of a tracked storage is not double counted; the sum is 10 B
    assert tracker.peak == 4000 + 25 * MB


def test_tensor_tracker_counts_freed_baseline() -> None:
    grad = [torch.zeros(MB // 4)]  # 1 MB of "old gradient", freed during the step
    with TensorMemoryTracker(grad) as tracker:
        grad.clear()
        new = torch.zeros(MB // 4)  # the new gradient replaces it: the peak is not 2 MB
        del new
    assert tracker.peak == MB


def test_cuda_memory_unavailable_on_cpu() -> None:
    m = CudaMemoryMeter("gpu_max_memory_allocated", torch.device("cpu"))
    m.start()
    r = m.stop()
    assert (r.value, r.source) == (None, "unavailable:no_gpu")
