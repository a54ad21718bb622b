"""For each meter: whether it works on this machine and, if not, why (for ``bpfree env``)."""

from __future__ import annotations

import torch

from bpfree.meters.energy import NvmlEnergy, RaplMeter, import_pynvml
from bpfree.meters.estimate import codecarbon_available
from bpfree.meters.memory import CudaMemoryMeter, PeakRssMeter


def meter_status(device: torch.device) -> list[tuple[str, str]]:
    """(meter, "works: how" | "unavailable:<why>") for every meter of a run on ``device``."""
    rows: list[tuple[str, str]] = [
        (
            "train_wall_time / selection_wall_time / test_wall_time",
            "works: time.perf_counter, device synchronised",
        ),
        ("train_cpu_time", "works: time.process_time (all threads of the training process)"),
    ]
    rapl = RaplMeter()
    cpu_reason = rapl.available()
    rows.append(("cpu_energy", cpu_reason or f"works: RAPL {', '.join(rapl.domains())}"))
    nvml = NvmlEnergy((device.index or 0) if device.type == "cuda" else None, idle_samples=0)
    if nvml.reason is None:
        rows.append(("gpu_energy", f"works: NVML total energy counter on {nvml.name}"))
    else:
        why = nvml.reason
        if why == "unavailable:no_gpu" and import_pynvml() is None:
            why += " (and nvidia-ml-py is not installed)"
        rows.append(("gpu_energy", why))
    rss = PeakRssMeter()
    reason = rss.available()
    how = (
        "VmHWM reset through /proc/self/clear_refs"
        if rss.method == "clear_refs"
        else "sampling VmRSS in a thread (/proc/self/clear_refs not writable)"
    )
    rows.append(("peak_rss_delta", reason or f"works: {how}"))
    rows.append(
        (
            "peak_tensor_memory",
            "works: TorchDispatchMode storage tracking on one probe step per phase",
        )
    )
    gpu_mem = CudaMemoryMeter("gpu_max_memory_allocated", device).available()
    rows.append(("gpu_max_memory_allocated/reserved", gpu_mem or "works: torch.cuda"))
    rows.append(
        (
            "train_flops / selection_flops / test_flops",
            "works: torch.utils.flop_counter.FlopCounterMode on probe steps",
        )
    )
    energy_ok = cpu_reason is None or nvml.reason is None
    rows.append(
        (
            "carbon",
            "works: measured kWh x grid intensity"
            if energy_ok
            else "unavailable:no_energy_measured (no energy counter works here)",
        )
    )
    rows.append(
        (
            "energy_estimate (optional)",
            codecarbon_available()
            or "works: CodeCarbon installed (enable with --set estimate_energy=true)",
        )
    )
    return rows
