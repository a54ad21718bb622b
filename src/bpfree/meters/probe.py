"""Probes of a rule's cost, run outside every timed window on a deep copy of the rule.

The copy shares the dataset tensors and owns a clone of the rule's generator, and the global
RNG state is saved and restored around it, so training itself is never changed by a probe.

* :func:`probe_phase`: FLOPs of ``begin_phase``, of the phase's first step and of its steady
  steps (a full batch and the last partial batch), and the peak bytes of live tensors while
  they run; :class:`PhaseProbe` turns them into FLOPs per epoch.
* :func:`probe_predict`: FLOPs of ``predict`` on one evaluation batch.

A probe that fails (a rule that cannot be copied, say) returns the reason as a string; the
run goes on and the figure is reported as unavailable with that reason.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from bpfree.data import DataBundle
from bpfree.meters.flops import METHOD, FlopCounts, count_flops
from bpfree.meters.memory import TensorMemoryTracker, storage_bytes
from bpfree.rules import Batch, Phase, Rule

T = TypeVar("T")


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
    peak_bytes: int = 0  # live tensor storage at its highest during the probe steps
    state_bytes: int = 0  # the rule's own tensors after them (parameters, gradients, optimizer
    # state, buffers, caches): what persists between steps
    activation_bytes: int = 0  # peak of what one steady step creates and frees again (its
    # input batch, which is data and the same for every rule, not counted)
    inference_bytes: int = 0  # peak live bytes of an inference-only pass (predict, no
    # autograd) on a training batch of the same size: parameters, buffers and activations

    @property
    def step_flops(self) -> int | None:
        """FLOPs of one steady full-batch step."""
        c = self.steady_full
        return None if c is None else c.forward + c.backward + c.update

    @property
    def setup_flops(self) -> int:
        """FLOPs of ``begin_phase`` and the extra cost of the phase's first step."""
        extra = 0
        if self.first is not None and self.steady_full is not None:
            extra = max(0, self.first.total - self.steady_full.total)
        return (self.setup.total if self.setup is not None else 0) + extra

    def epoch(self, first_epoch: bool, steps: int | None = None) -> tuple[int, int]:
        """(forward, backward + update) FLOPs of one epoch, or of its first ``steps`` steps
        (an epoch cut short by a compute ceiling: full batches only)."""
        if steps is not None and steps < self.full + (1 if self.rest else 0):
            return self._steps(first_epoch, steps)
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

    def _steps(self, first_epoch: bool, steps: int) -> tuple[int, int]:
        parts: list[tuple[FlopCounts | None, int]] = [(self.steady_full, steps)]
        if first_epoch:  # begin_phase ran even if no step did
            parts = [(self.setup, 1)]
            if steps:
                parts += [(self.first, 1), (self.steady_full, steps - 1)]
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


def probe_phase(
    rule: Rule, data: DataBundle, device: torch.device, phase: Phase | None
) -> PhaseProbe | str:
    """FLOPs and tensor peak of the phase's steps, measured on a copy of the rule.

    With ``phase`` (a phase about to start): ``begin_phase``, the first step and the steady
    steps after it, so one-off work (feature caches, closed-form solves) is counted once.
    Without (a run resumed mid-phase): steady steps of a copy of the current rule.
    """
    batch_size = rule.hp.batch_size
    full, rest = divmod(int(data.train_x.shape[0]), batch_size)

    def run() -> PhaseProbe:
        probe = PhaseProbe(batch_size=batch_size, full=full, rest=rest)
        clone = copy_rule(rule, data)
        clone.train()
        state = [t for t in _tensors(clone) if not _is_data(t, data)]
        # One pass serves both: the FLOP counter (inner mode) sees each op first and passes
        # it on to the storage tracker, which sees the same outputs real training makes.
        with TensorMemoryTracker(state) as tracker:
            if phase is not None:
                with count_flops() as c:
                    clone.start_phase(phase, data.train_x, data.train_y)
                probe.setup = c
                with count_flops() as c:
                    clone.train_step(_batch(data, batch_size if full else rest))
                probe.first = c
            for rows, key in ((batch_size, "steady_full"), (rest, "steady_partial")):
                if rows and (key == "steady_partial" or full):
                    batch = _batch(data, rows)  # the input is data, not an activation
                    tracker.mark()
                    with count_flops() as c:
                        clone.train_step(batch)
                    setattr(probe, key, c)
                    probe.activation_bytes = max(probe.activation_bytes, tracker.window_peak())
        probe.peak_bytes = tracker.peak
        probe.state_bytes = storage_bytes(t for t in _tensors(clone) if not _is_data(t, data))
        probe.inference_bytes = _inference_peak(clone, _batch(data, batch_size if full else rest))
        return probe

    return _guarded(device, run)


def probe_predict(rule: Rule, data: DataBundle, device: torch.device, rows: int) -> int | str:
    """FLOPs of ``predict`` on ``rows`` samples, on a copy of the rule."""

    def run() -> int:
        clone = copy_rule(rule, data)
        clone.eval()
        x = data.val_x if data.val_x.shape[0] >= rows else data.train_x
        with torch.no_grad(), count_flops() as c:
            clone.predict(x[:rows])
        return c.total

    return _guarded(device, run)


def _inference_peak(rule: Rule, batch: Batch) -> int:
    """Peak live tensor bytes of ``predict`` on ``batch`` without autograd, counting the
    modules' parameters and buffers (not gradients or optimizer state): the memory a forward
    pass alone needs, the reference a forward-only rule is measured against."""
    resident = [*rule.modules.parameters(), *rule.modules.buffers()]
    rule.eval()
    with TensorMemoryTracker(resident) as tracker, torch.no_grad():
        rule.predict(batch.x)
    rule.train()
    return tracker.peak


def copy_rule(rule: Rule, data: DataBundle) -> Rule:
    """A deep copy of the rule sharing the dataset tensors, with its own generator."""
    memo: dict[int, Any] = {id(t): t for t in _data_tensors(data)}
    gen = rule.generator
    if gen is not None:
        clone = torch.Generator(device=gen.device)
        clone.set_state(gen.get_state())
        memo[id(gen)] = clone
    return copy.deepcopy(rule, memo)


def _guarded(device: torch.device, fn: Callable[[], T]) -> T | str:
    """``fn()`` with the global RNG state saved and restored; a failure becomes its reason."""
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            return fn()
    except Exception as exc:  # a rule that cannot be copied or probed: say so, keep training
        return f"probe_failed ({type(exc).__name__}: {exc})"


def _batch(data: DataBundle, rows: int) -> Batch:
    index = torch.arange(rows, device=data.train_x.device)
    return Batch(data.train_x[index], data.train_y[index], index)


def _data_tensors(data: DataBundle) -> tuple[torch.Tensor, ...]:
    return (data.train_x, data.train_y, data.val_x, data.val_y, data.test_x, data.test_y)


def _is_data(t: torch.Tensor, data: DataBundle) -> bool:
    return any(t is d for d in _data_tensors(data))


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
