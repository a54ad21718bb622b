"""The meters of one run, and the probes the trainer runs between its timed windows.

The trainer owns the windows; this module decides what is measured in them:

* training windows (one per epoch): wall and CPU time, CPU energy (RAPL), GPU energy (NVML, raw
  and above idle, with the idle power), peak RSS above the pre-training baseline, GPU allocator
  peaks, and optionally a CodeCarbon estimate. The timers are last in the list, so they start
  last and stop first: the other meters' own start/stop costs fall outside the timed region.
* evaluation windows: wall time.
* probes, outside every window, once per phase on a deep copy of the rule (so training is
  unchanged): FLOPs of one full training batch and of the last partial batch, FLOPs of
  ``predict`` on the evaluation batch sizes, and the peak bytes of live tensors of one step.
  FLOPs per epoch = full batches x probe + partial-batch probe.

``finish`` derives totals (``train_flops``, ``train_flops_per_s``, utilisation of the measured
matmul peak, ``carbon``) and fills every name in ``REQUIRED`` that could not be measured with
``value: null`` and the reason.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from bpfree.meters.base import Meter, Reading, add, peak
from bpfree.meters.carbon import carbon_estimate_from, carbon_from, resolve_intensity
from bpfree.meters.energy import NvmlEnergy, RaplMeter
from bpfree.meters.estimate import CodeCarbonMeter
from bpfree.meters.flops import METHOD, FlopCounts, count_flops
from bpfree.meters.memory import CudaMemoryMeter, PeakRssMeter, TensorMemoryTracker
from bpfree.meters.peak import matmul_peak, peak_reading
from bpfree.meters.timing import CpuTimer, WallTimer

if TYPE_CHECKING:
    from bpfree.config import TrainConfig
    from bpfree.data import DataBundle
    from bpfree.rules import Rule
    from bpfree.rules.base import Phase

REQUIRED = (
    "train_wall_time",
    "train_cpu_time",
    "eval_wall_time",
    "gpu_energy",
    "cpu_energy",
    "carbon",
    "peak_rss_delta",
    "peak_tensor_memory",
    "train_flops",
    "train_flops_per_s",
)
UNITS = {
    "train_wall_time": "s",
    "train_cpu_time": "s",
    "eval_wall_time": "s",
    "gpu_energy": "J",
    "gpu_energy_above_idle": "J",
    "gpu_idle_power": "W",
    "cpu_energy": "J",
    "carbon": "g",
    "peak_rss_delta": "B",
    "peak_tensor_memory": "B",
    "gpu_max_memory_allocated": "B",
    "gpu_max_memory_reserved": "B",
    "train_flops": "FLOP",
    "train_flops_forward": "FLOP",
    "train_flops_backward": "FLOP",
    "eval_flops": "FLOP",
    "train_flops_per_s": "FLOP/s",
    "train_flops_utilisation": "1",
    "matmul_peak": "FLOP/s",
}


def _batch(data: DataBundle, rows: int) -> Any:
    from bpfree.rules import Batch

    index = torch.arange(rows, device=data.train_x.device)
    return Batch(data.train_x[index], data.train_y[index], index)


@dataclass
class PhaseProbe:
    """FLOPs of one phase's probe steps; ``epoch`` turns them into FLOPs per epoch."""

    batch_size: int
    full: int  # full batches per epoch
    rest: int  # size of the last partial batch (0: none)
    setup: FlopCounts | None = None  # begin_phase
    first: FlopCounts | None = None  # the phase's first step
    steady_full: FlopCounts | None = None
    steady_partial: FlopCounts | None = None
    peak_bytes: int = 0

    def epoch(self, first_epoch: bool) -> tuple[int, int]:
        """(forward, backward + update) FLOPs of one epoch."""
        n_full, n_partial = self.full, 1 if self.rest else 0
        parts: list[tuple[FlopCounts | None, int]] = []
        if first_epoch:  # begin_phase, then the first step in place of one steady step
            parts += [(self.setup, 1), (self.first, 1)]
            if n_full:
                n_full -= 1
            else:  # fewer samples than a batch: the first step was the partial batch
                n_partial -= 1
        parts += [(self.steady_full, n_full), (self.steady_partial, n_partial)]
        fwd = sum(c.forward * k for c, k in parts if c is not None)
        bwd = sum((c.backward + c.update) * k for c, k in parts if c is not None)
        return fwd, bwd

    def note(self) -> str:
        steps = f"{self.full} x batch {self.batch_size}" + (
            f" + a last partial batch of {self.rest}" if self.rest else ""
        )
        return (
            f"{METHOD} on probe steps of a copy of the rule, outside the timed window, once per "
            f"phase: per epoch {steps}"
            + ("; the phase's begin_phase and first step counted once" if self.first else "")
        )


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
        self.enabled = getattr(config, "meters", True) if enabled is None else enabled
        self.intensity = resolve_intensity(
            getattr(config, "grid_intensity", None), getattr(config, "country", None)
        )
        self._train_probe: dict[int, PhaseProbe | str] = {}
        self._eval_probe: dict[tuple[int, int], int | str] = {}
        self.peak: dict[str, Any] | None = None
        if not self.enabled:
            self.train: list[Meter] = [WallTimer("train_wall_time", device)]
            self.evaluation: list[Meter] = [WallTimer("eval_wall_time", device)]
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
        if getattr(config, "estimate_energy", False):
            country = self.intensity.country or "USA"
            self.train.append(CodeCarbonMeter("energy_estimate", country=country))
        self.train += [CpuTimer("train_cpu_time", device), WallTimer("train_wall_time", device)]
        self.evaluation = [WallTimer("eval_wall_time", device)]

    # ---- probes (outside the timed windows) -------------------------------------------------
    def _copy(self, rule: Rule) -> Rule:
        """A deep copy of the rule sharing the dataset tensors, with its own generator."""
        d = self.data
        memo: dict[int, Any] = {
            id(t): t for t in (d.train_x, d.train_y, d.val_x, d.val_y, d.test_x, d.test_y)
        }
        gen = rule.generator
        if gen is not None:
            clone = torch.Generator(device=gen.device)
            clone.set_state(gen.get_state())
            memo[id(gen)] = clone
        return copy.deepcopy(rule, memo)

    def _isolated(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` with the global RNG state saved and restored (training must not change)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return fn()

    def _probe_phase(self, rule: Rule, phase: Phase | None) -> PhaseProbe | str:
        """FLOPs and tensor peak of the phase's steps, measured on copies of the rule.

        With ``phase`` (a phase about to start): ``begin_phase``, the first step and the steady
        steps after it, so one-off work (feature caches, closed-form solves) is counted once.
        Without (a run resumed mid-phase): steady steps of a copy of the current rule.
        """
        batch_size = rule.hp.batch_size
        d = self.data
        n = int(d.train_x.shape[0])
        full, rest = divmod(n, batch_size)

        def run() -> PhaseProbe:
            probe = PhaseProbe(batch_size=batch_size, full=full, rest=rest)
            copy_ = self._copy(rule)
            copy_.train()
            state = [t for t in _tensors(copy_) if not _is_data(t, d)]
            # One pass serves both: the FLOP counter (inner mode) sees each op first and passes
            # it on to the storage tracker, which sees the same outputs real training makes.
            with TensorMemoryTracker(state) as tracker:
                if phase is not None:
                    with count_flops() as c:
                        copy_.begin_phase(phase, d.train_x, d.train_y)
                    probe.setup = c
                    with count_flops() as c:
                        copy_.train_step(_batch(d, batch_size if full else rest))
                    probe.first = c
                for rows, key in ((batch_size, "steady_full"), (rest, "steady_partial")):
                    if rows and (key == "steady_partial" or full):
                        with count_flops() as c:
                            copy_.train_step(_batch(d, rows))
                        setattr(probe, key, c)
            probe.peak_bytes = tracker.peak
            return probe

        try:
            return self._isolated(run)
        except Exception as exc:  # a rule that cannot be copied or probed: say so, keep training
            return f"probe_failed ({type(exc).__name__}: {exc})"

    def before_phase(self, rule: Rule, phase_index: int, phase: Phase) -> None:
        """Probe a phase that is about to start (call outside the timed windows)."""
        if self.enabled:
            self._train_probe[phase_index] = self._probe_phase(rule, phase)

    def after_train(
        self, cost: dict[str, Reading], rule: Rule, phase_index: int, first_epoch: bool
    ) -> None:
        """Account one training epoch's FLOPs and the phase's tensor peak (call outside windows).

        ``first_epoch``: the epoch ran ``begin_phase`` (its one-off work is added once).
        """
        if not self.enabled:
            return
        if phase_index not in self._train_probe:  # resumed mid-phase: steady steps only
            self._train_probe[phase_index] = self._probe_phase(rule, None)
        probe = self._train_probe[phase_index]
        if isinstance(probe, str):
            for name in ("train_flops_forward", "train_flops_backward", "peak_tensor_memory"):
                _fold(cost, name, Reading.unavailable(UNITS[name], probe), add)
            return
        fwd, bwd = probe.epoch(first_epoch and probe.first is not None)
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
        _fold(
            cost,
            "peak_tensor_memory",
            Reading(
                float(probe.peak_bytes),
                "B",
                "probe:dispatch_storage_tracking",
                "peak bytes of live tensor storage in begin_phase and the first training steps "
                "of a copy of the rule (its state: parameters, gradients, optimizer state, caches; "
                "the batch and activations; the dataset excluded; kernel-internal scratch not "
                "seen), TorchDispatchMode, outside the timed window",
            ),
            peak,
        )

    def after_eval(self, cost: dict[str, Reading], rule: Rule, phase_index: int, n: int) -> None:
        """Account the FLOPs of one evaluation of ``n`` samples (``predict`` probed once)."""
        if not self.enabled:
            return
        rows = self.config.eval_batch_size
        total = 0
        for size, times in ((rows, n // rows), (n % rows, 1)):
            if size == 0 or times == 0:
                continue
            key = (phase_index, size)
            if key not in self._eval_probe:
                self._eval_probe[key] = self._probe_predict(rule, size)
            probe = self._eval_probe[key]
            if isinstance(probe, str):
                _fold(cost, "eval_flops", Reading.unavailable("FLOP", probe), add)
                return
            total += times * probe
        _fold(
            cost,
            "eval_flops",
            Reading(
                float(total),
                "FLOP",
                METHOD,
                f"rule.predict probed once per phase and batch size on a copy, x batches "
                f"(eval batch {rows})",
            ),
            add,
        )

    def _probe_predict(self, rule: Rule, rows: int) -> int | str:
        def run() -> int:
            probe = self._copy(rule)
            probe.eval()
            x = self.data.val_x if self.data.val_x.shape[0] >= rows else self.data.train_x
            with torch.no_grad(), count_flops() as c:
                probe.predict(x[:rows])
            return c.total

        try:
            return self._isolated(run)
        except Exception as exc:
            return f"probe_failed ({type(exc).__name__}: {exc})"

    # ---- totals -----------------------------------------------------------------------------
    def finish(self, cost: dict[str, Reading]) -> dict[str, Reading]:
        """Derived readings and an explicit null (with the reason) for everything unmeasured."""
        out = dict(cost)
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


def _fold(
    cost: dict[str, Reading],
    name: str,
    reading: Reading,
    combine: Callable[[Reading | None, Reading], Reading],
) -> None:
    cost[name] = combine(cost.get(name), reading)


def _is_data(t: torch.Tensor, data: DataBundle) -> bool:
    return any(
        t is d
        for d in (data.train_x, data.train_y, data.val_x, data.val_y, data.test_x, data.test_y)
    )


def _tensors(obj: Any, seen: set[int] | None = None) -> list[torch.Tensor]:
    """Every tensor reachable from a rule: module state, gradients, optimizer state, attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        found = [obj]
        if obj.grad is not None:
            found.append(obj.grad)
        return found
    if isinstance(obj, torch.nn.Module):
        return [t for v in (*obj.parameters(), *obj.buffers()) for t in _tensors(v, seen)] + (
            _tensors(vars(obj), seen)
        )
    if isinstance(obj, torch.optim.Optimizer):
        return [t for s in obj.state.values() for t in _tensors(s, seen)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v, seen)]
    if isinstance(obj, (list, tuple, set)):
        return [t for v in obj for t in _tensors(v, seen)]
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return _tensors(vars(obj), seen)
    return []
