"""The meters of one run, and the probes the trainer runs between its timed windows.

The trainer owns the windows; this module decides what is measured in them:

* training windows (one per epoch): wall and CPU time, CPU energy (RAPL), GPU energy (NVML, raw
  and above idle, with the idle power), peak RSS above the pre-training baseline, GPU allocator
  peaks, and optionally a CodeCarbon estimate. The timers are last in the list, so they start
  last and stop first: the other meters' own start/stop costs fall outside the timed region.
* evaluation windows, ``selection`` (validation, for early stopping) and ``test``: wall time.
* probes, outside every window, once per phase on a deep copy of the rule (so training is
  unchanged): FLOPs of one full training batch and of the last partial batch, FLOPs of
  ``predict`` on the evaluation batch sizes, and the peak bytes of live tensors of one step.
  FLOPs per epoch = full batches x probe + partial-batch probe.

``finish`` derives totals (``train_flops``, ``train_flops_per_s``, utilisation of the measured
matmul peak, ``carbon``) and fills every name in ``REQUIRED`` that could not be measured with
``value: null`` and the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bpfree.config import TrainConfig
from bpfree.data import DataBundle
from bpfree.meters.base import Meter, Reading, add, peak
from bpfree.meters.carbon import carbon_estimate_from, carbon_from, resolve_intensity
from bpfree.meters.energy import NvmlEnergy, RaplMeter
from bpfree.meters.estimate import CodeCarbonMeter
from bpfree.meters.flops import METHOD
from bpfree.meters.memory import CudaMemoryMeter, PeakRssMeter
from bpfree.meters.peak import matmul_peak, peak_reading
from bpfree.meters.probe import PhaseProbe, probe_phase, probe_predict
from bpfree.meters.timing import CpuTimer, WallTimer
from bpfree.rules import Phase, Rule

REQUIRED = (
    "train_wall_time",
    "train_cpu_time",
    "selection_wall_time",
    "selection_flops",
    "gpu_energy",
    "cpu_energy",
    "carbon",
    "peak_rss_delta",
    "peak_tensor_memory",
    "state_memory",
    "activation_memory",
    "train_flops",
    "train_flops_per_s",
)
UNITS = {
    "train_wall_time": "s",
    "train_cpu_time": "s",
    "selection_wall_time": "s",
    "test_wall_time": "s",
    "gpu_energy": "J",
    "gpu_energy_above_idle": "J",
    "gpu_idle_power": "W",
    "cpu_energy": "J",
    "carbon": "g",
    "peak_rss_delta": "B",
    "peak_tensor_memory": "B",
    "state_memory": "B",
    "activation_memory": "B",
    "inference_memory": "B",
    "gpu_max_memory_allocated": "B",
    "gpu_max_memory_reserved": "B",
    "train_flops": "FLOP",
    "train_flops_forward": "FLOP",
    "train_flops_backward": "FLOP",
    "selection_flops": "FLOP",
    "test_flops": "FLOP",
    "train_flops_per_s": "FLOP/s",
    "train_flops_utilisation": "1",
    "matmul_peak": "FLOP/s",
}


class MeterSuite:
    """Builds a run's meters; probes FLOPs and tensor memory between windows; derives totals."""

    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        data: DataBundle,
        *,
        enabled: bool | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.data = data
        self.enabled = config.meters if enabled is None else enabled
        self.intensity = resolve_intensity(config.grid_intensity, config.country)
        self._train_probe: dict[int, PhaseProbe | str] = {}
        self._eval_probe: dict[tuple[int, int], int | str] = {}
        self.peak: dict[str, Any] | None = None
        if not self.enabled:
            self.train: list[Meter] = [WallTimer("train_wall_time", device)]
            self.selection: list[Meter] = [WallTimer("selection_wall_time", device)]
            self.test: list[Meter] = [WallTimer("test_wall_time", device)]
            return
        self.peak = matmul_peak(device)
        nvml = NvmlEnergy((device.index or 0) if device.type == "cuda" else None)
        self.train = [
            RaplMeter("cpu_energy"),
            *nvml.meters(device),
            PeakRssMeter("peak_rss_delta"),  # baseline: RSS now, before the first window
            CudaMemoryMeter("gpu_max_memory_allocated", device, "allocated"),
            CudaMemoryMeter("gpu_max_memory_reserved", device, "reserved"),
        ]
        if config.estimate_energy:
            country = self.intensity.country or "USA"
            self.train.append(CodeCarbonMeter("energy_estimate", country=country))
        self.train += [CpuTimer("train_cpu_time", device), WallTimer("train_wall_time", device)]
        self.selection = [WallTimer("selection_wall_time", device)]
        self.test = [WallTimer("test_wall_time", device)]

    # ---- probes (outside the timed windows) -------------------------------------------------
    def before_phase(self, rule: Rule, phase_index: int, phase: Phase) -> None:
        """Probe a phase that is about to start (call outside the timed windows)."""
        if self.enabled:
            self._train_probe[phase_index] = probe_phase(rule, self.data, self.device, phase)

    def probe(self, rule: Rule, phase_index: int) -> PhaseProbe | str | None:
        """The phase's probe (None: meters off; a string: why it failed)."""
        if not self.enabled:
            return None
        if phase_index not in self._train_probe:  # resumed mid-phase: steady steps only
            self._train_probe[phase_index] = probe_phase(rule, self.data, self.device, None)
        return self._train_probe[phase_index]

    def after_train(
        self,
        cost: dict[str, Reading],
        rule: Rule,
        phase_index: int,
        first_epoch: bool,
        steps: int | None = None,
    ) -> None:
        """Account one training epoch's FLOPs and the phase's tensor memory (outside windows).

        ``first_epoch``: the epoch ran ``begin_phase`` (its one-off work is added once);
        ``steps``: the epoch was cut short after that many steps (a compute ceiling).
        """
        probe = self.probe(rule, phase_index)
        if probe is None:
            return
        if isinstance(probe, str):
            for name in ("train_flops_forward", "train_flops_backward", *MEMORY):
                _fold(cost, name, Reading.unavailable(UNITS[name], probe), add)
            return
        fwd, bwd = probe.epoch(first_epoch and probe.first is not None, steps)
        note = probe.note()
        _fold(
            cost,
            "train_flops_forward",
            Reading(float(fwd), "FLOP", METHOD, "forward: inside nn.Module calls; " + note),
            add,
        )
        _fold(
            cost,
            "train_flops_backward",
            Reading(
                float(bwd),
                "FLOP",
                METHOD,
                "backward/update: autograd backward plus hand-written updates; " + note,
            ),
            add,
        )
        for name, value in memory_readings(probe).items():
            _fold(cost, name, value, peak)

    def after_eval(
        self, cost: dict[str, Reading], rule: Rule, phase_index: int, n: int, name: str
    ) -> None:
        """Account the FLOPs of one evaluation of ``n`` samples into ``name``
        (``selection_flops`` for validation, ``test_flops``); ``predict`` probed once."""
        if not self.enabled:
            return
        rows = self.config.eval_batch_size
        total = 0
        for size, times in ((rows, n // rows), (n % rows, 1)):
            if size == 0 or times == 0:
                continue
            key = (phase_index, size)
            if key not in self._eval_probe:
                self._eval_probe[key] = probe_predict(rule, self.data, self.device, size)
            probe = self._eval_probe[key]
            if isinstance(probe, str):
                _fold(cost, name, Reading.unavailable("FLOP", probe), add)
                return
            total += times * probe
        _fold(
            cost,
            name,
            Reading(
                float(total),
                "FLOP",
                METHOD,
                f"rule.predict probed once per phase and batch size on a copy, x batches "
                f"(eval batch {rows})",
            ),
            add,
        )

    # ---- totals -----------------------------------------------------------------------------
    def finish(self, cost: dict[str, Reading]) -> dict[str, Reading]:
        """Derived readings and an explicit null (with the reason) for everything unmeasured."""
        out = dict(cost)
        for m in self.train:  # counters that judge the run's total (NVML: its minimum window)
            settle = getattr(m, "settle", None)
            if settle is not None and m.name in out:
                out[m.name] = settle(out[m.name])
        reason = "unavailable:meters_disabled" if not self.enabled else "unavailable:not_measured"
        fwd, bwd = out.get("train_flops_forward"), out.get("train_flops_backward")
        if fwd is not None and bwd is not None:
            total = add(fwd, bwd)
            out["train_flops"] = (
                Reading(
                    total.value,
                    "FLOP",
                    total.source,
                    "forward + backward/update; " + fwd.note.split("; ", 1)[-1],
                )
                if total.value is not None
                else total
            )
        flops, wall = out.get("train_flops"), out.get("train_wall_time")
        if flops is not None and flops.value is not None and wall is not None and wall.value:
            rate = flops.value / wall.value
            out["train_flops_per_s"] = Reading(
                rate,
                "FLOP/s",
                "train_flops/train_wall_time",
                "achieved, over the timed training windows",
            )
            pk = peak_reading(self.peak) if self.enabled else None
            if pk is not None:
                out["matmul_peak"] = pk
                out["train_flops_utilisation"] = (
                    Reading(rate / pk.value, "1", "train_flops_per_s/matmul_peak", pk.note)
                    if pk.value
                    else Reading.unavailable("1", pk.source)
                )
        elif flops is not None and flops.value is None:
            out["train_flops_per_s"] = Reading.unavailable("FLOP/s", flops.source)
        if self.enabled:
            energy = [out[k] for k in ("cpu_energy", "gpu_energy") if k in out]
            out["carbon"] = carbon_from(energy, self.intensity)
            if "energy_estimate" in out:
                out["carbon_estimate"] = carbon_estimate_from(
                    out["energy_estimate"], self.intensity
                )
        for name in REQUIRED:
            if name not in out:
                out[name] = Reading.unavailable(UNITS[name], reason)
        return out


MEMORY = ("peak_tensor_memory", "state_memory", "activation_memory", "inference_memory")
_PROBE_NOTE = (
    "a probe, not the whole run: live tensor storage while begin_phase and the first training "
    "steps of a copy of the rule ran, outside the timed window (TorchDispatchMode; the dataset "
    "excluded; kernel-internal scratch not seen)"
)


def memory_readings(probe: PhaseProbe) -> dict[str, Reading]:
    """Peak tensor memory of the probe steps, the rule's persistent state, and the activations
    of a steady step."""
    source = "probe:dispatch_storage_tracking"
    return {
        "peak_tensor_memory": Reading(float(probe.peak_bytes), "B", source, _PROBE_NOTE),
        "state_memory": Reading(
            float(probe.state_bytes),
            "B",
            source,
            "the rule's own tensors after the probe steps: parameters, gradients, optimizer "
            "state, buffers, caches",
        ),
        "activation_memory": Reading(
            float(probe.activation_bytes),
            "B",
            source,
            "the peak bytes of what one steady training step creates and frees again "
            "(activations and temporaries; not its input batch, nor the gradients and "
            "optimizer state it leaves behind); " + _PROBE_NOTE,
        ),
        "inference_memory": Reading(
            float(probe.inference_bytes),
            "B",
            source,
            "peak live tensor storage of an inference-only pass (predict without autograd) on "
            "one training batch of the same size: parameters, buffers and activations; the "
            "reference for peak_tensor_memory",
        ),
    }


def _fold(
    cost: dict[str, Reading],
    name: str,
    reading: Reading,
    combine: Callable[[Reading | None, Reading], Reading],
) -> None:
    cost[name] = combine(cost.get(name), reading)
