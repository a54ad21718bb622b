"""The trainer owns the loop, the clock, evaluation, early stopping, checkpoints and the run dir.

The run's budget is ``epochs`` data passes in total, split over the rule's phases (one for most
rules; one per layer for sequential ones; see ``engine/budget.py``). Per phase:

    for each of its epochs:
        [window "train"]      permute indices, rule.train_step on each batch (a compute
                              ceiling, budget_flops or budget_seconds, may cut it short)
        divergence guard      non-finite loss or parameters, or a loss far above its start
        [window "selection"]  validation accuracy / loss
        early stopping on the monitored metric; remember the best weights
        checkpoint (outside the windows)
    restore the phase's best weights

then the test set is evaluated once, in the "test" window. Nothing runs per step in the timed
window except the rule's own update, the batch indexing and the ceilings' step count and clock
(no ``.item()``, no callbacks, no logging).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bpfree.config import TrainConfig
from bpfree.data import DataBundle
from bpfree.engine.budget import (
    STOP_EARLY,
    STOP_EPOCHS,
    STOP_FLOPS,
    STOP_SECONDS,
    Ceiling,
    allot_epochs,
    difference,
    flops_so_far,
)
from bpfree.engine.build import build_rule, load_data, phase_plan
from bpfree.engine.checkpoint import CHECKPOINT, restore, save_checkpoint
from bpfree.engine.environment import describe, resolve_device
from bpfree.engine.guard import divergence
from bpfree.engine.interrupt import RunInterrupted, sigterm_as_interrupt
from bpfree.engine.loop import EpochStats, evaluate, train_epoch
from bpfree.engine.pipeline import Group
from bpfree.engine.result import RunResult, build_result
from bpfree.engine.rundir import RunDir
from bpfree.engine.seeding import generator, seeded_global_rng
from bpfree.engine.state import LoopState, clone_modules, new_stopper, restore_modules
from bpfree.engine.windows import SELECTION, TEST, TRAIN, Windows
from bpfree.errors import ConfigError, shorten
from bpfree.meters import Reading
from bpfree.meters.probe import PhaseProbe
from bpfree.meters.suite import MeterSuite
from bpfree.progress import progress_bar
from bpfree.rules import Phase, Rule

__all__ = ["CHECKPOINT", "RunInterrupted", "Trainer", "evaluate", "train_epoch"]


class Trainer:
    """Runs one configuration to a :class:`RunResult`, optionally in a run directory."""

    def __init__(
        self,
        config: TrainConfig,
        out: str | Path | None = None,
        *,
        resume: bool = False,
        progress: bool | None = None,
        data: DataBundle | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        evaluate_test: bool = True,
        group: Group | None = None,
    ) -> None:
        """``on_epoch(record)`` observes each epoch's metrics record, outside the timed windows
        (it may raise to stop the run, e.g. a pruned tuning trial; it never changes training).
        ``evaluate_test=False`` skips the final test evaluation: tuning trials must not see the
        test set. ``self.cost`` holds the cost readings accumulated so far, also after a hook
        raised. ``group``: this process's place in a parallel run (engine/parallel.py starts
        the processes; rank 0 alone writes the run directory)."""
        self.config = config
        self.group = group
        self.out = Path(out) if out is not None else None
        self.rundir = RunDir(self.out, resume)
        self.progress = progress
        self.data = data
        self.on_epoch = on_epoch
        self.evaluate_test = evaluate_test
        self.cost: dict[str, Reading] = {}
        self.ceiling = Ceiling(config.budget_flops, config.budget_seconds)
        self._suite: MeterSuite | None = None

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> RunResult:
        finished = self.rundir.finished()
        if finished is not None:
            return finished
        if max(self.config.stages, self.config.replicas) > 1 and self.group is None:
            raise ConfigError(
                "a run over several processes (stages or replicas > 1) is started by "
                "bpfree.train or bpfree.engine.parallel.run_config, not by Trainer"
            )
        ckpt = self.rundir.checkpoint(self.config)
        if self.group is not None:
            ckpt = self.group.share(ckpt)  # rank 0 reads the run directory
        phase_plan(self.config)  # a budget that cannot cover the phases fails before any work
        device = resolve_device(self.config.device)
        if self.data is None:
            self.data = load_data(self.config, device)
        rule = build_rule(self.config, self.data, device)
        if self.group is not None:
            self.group.setup(rule)
        self.rundir.start(self.config, describe(device))
        with sigterm_as_interrupt(), seeded_global_rng(self.config.seed, device):
            return self._train(rule, self.data, device, ckpt)

    def _train(
        self, rule: Rule, data: DataBundle, device: torch.device, ckpt: dict[str, Any] | None
    ) -> RunResult:
        cfg = self.config
        batches = generator(cfg.seed, "batches")  # CPU: permutations are drawn on the host
        suite = self._suite = MeterSuite(cfg, device, data)  # before training: baselines
        windows = Windows({TRAIN: suite.train, SELECTION: suite.selection, TEST: suite.test})
        phases = allot_epochs(rule.phases(), cfg.epochs, cfg.rule)
        state = self._initial_state(rule, data, phases, batches, ckpt)
        try:
            while state.phase < len(phases) and not state.stopped_by.startswith("budget"):
                self._run_phase(rule, data, device, phases, batches, windows, state)
                if state.status != "completed":
                    break
                self._end_phase(rule, batches, phases, state)
        except KeyboardInterrupt:
            result = self._result(rule, data, "interrupted", "interrupted by the user", state)
            self.rundir.write_result(result)
            raise RunInterrupted(
                "run interrupted"
                + (f"; continue it with --resume --out {self.out}" if self.out else "")
            ) from None
        return self._finish(rule, data, phases, windows, state)

    def _initial_state(
        self,
        rule: Rule,
        data: DataBundle,
        phases: list[Phase],
        batches: torch.Generator,
        ckpt: dict[str, Any] | None,
    ) -> LoopState:
        """A fresh loop state, or the checkpoint's (rule, generators and metrics restored)."""
        if ckpt is None:
            state = LoopState(stopper=new_stopper(self.config))
        else:
            try:
                restore(rule, batches, ckpt)
                state = LoopState.from_checkpoint(ckpt)
                if state.epoch_in_phase > 0:  # mid-phase: rebuild the phase's parts, then state
                    rule.start_phase(phases[state.phase], data.train_x, data.train_y)
                    rule.load_state_dict(ckpt["rule"])
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
                raise ConfigError(
                    f"{self.out / CHECKPOINT} does not hold this run's state "
                    f"({type(e).__name__}: {shorten(e)}); remove it to start the run afresh"
                ) from None
        self.cost = state.cost  # live: a hook that stops the run still leaves what was spent
        self.rundir.reset_metrics(state.history)
        return state

    # ---- one phase, one epoch ---------------------------------------------------------------
    def _run_phase(
        self,
        rule: Rule,
        data: DataBundle,
        device: torch.device,
        phases: list[Phase],
        batches: torch.Generator,
        windows: Windows,
        state: LoopState,
    ) -> None:
        """Epochs of the current phase until its allotment, early stopping, a compute ceiling
        or divergence; ``state.stopped_by`` says which."""
        phase = phases[state.phase]
        cap = phase.max_epochs or 0
        bar = progress_bar(
            total=cap,
            initial=state.epoch_in_phase,
            desc=f"{self.config.rule} {phase.name}",
            unit="epoch",
            disable=None if self.progress is None else not self.progress,
        )
        with bar:
            while state.epoch_in_phase < cap and not state.stopper.should_stop:
                record = self._epoch(rule, data, device, phase, batches, windows, state)
                if record is None:  # diverged, or a ceiling left no step
                    return
                bar.update(1)
                bar.set_postfix(val_acc=f"{record['val_accuracy']:.4f}")
                self._checkpoint(rule, batches, state)
                self.rundir.append_metrics(record)  # after the checkpoint: resume rewrites it
                if self.on_epoch is not None:
                    self.on_epoch(record)
                if state.stopped_by.startswith("budget"):  # a ceiling cut this epoch short
                    return
        state.stopped_by = STOP_EARLY if state.stopper.should_stop else STOP_EPOCHS

    def _epoch(
        self,
        rule: Rule,
        data: DataBundle,
        device: torch.device,
        phase: Phase,
        batches: torch.Generator,
        windows: Windows,
        state: LoopState,
    ) -> dict[str, Any] | None:
        """One training window and one selection window; the epoch's record (None: the run
        diverged, or a compute ceiling left no step)."""
        suite, first = self._suite, state.epoch_in_phase == 0
        assert suite is not None
        if first:  # probe the phase on a copy, before the window
            suite.before_phase(rule, state.phase, phase)
        limits = self._limits(rule, state, first)
        if limits is None:
            return None
        before = flops_so_far(state.cost)
        rule.train()
        if self.group is not None:
            self.group.ready()
        with windows.measure(TRAIN, state.cost) as train:
            if first:
                rule.start_phase(phase, data.train_x, data.train_y)
            run_epoch = train_epoch if self.group is None else self.group.train_epoch
            stats = run_epoch(rule, data, batches, rule.hp.batch_size, device, *limits)
        train_loss = self._account(rule, data, stats, first, limits[0] is not None, state)
        if train_loss is None:
            return None
        with windows.measure(SELECTION, state.cost) as ev:
            score = evaluate if self.group is None else self.group.evaluate
            val_acc, val_loss = score(rule, data.val_x, data.val_y, self.config.eval_batch_size)
        suite.after_eval(state.cost, rule, state.phase, int(data.val_x.shape[0]), "selection_flops")
        improved = state.stopper.update(
            val_acc if self.config.monitor == "val_accuracy" else val_loss, state.epoch + 1
        )
        if improved:
            state.best = clone_modules(rule)
        after = flops_so_far(state.cost)
        record = {
            "epoch": state.epoch + 1,
            "phase": phase.name,
            "epoch_in_phase": state.epoch_in_phase,
            "train_loss": train_loss,
            "val_accuracy": val_acc,
            "val_loss": val_loss,
            "improved": improved,
            "train_wall_time_s": train.wall_s,
            "selection_wall_time_s": ev.wall_s,
            "samples": stats.samples,
            "steps": stats.steps,
            "train_flops": difference(after[0], before[0]),
            "selection_flops": difference(after[1], before[1]),
            **({} if self.group is None else self.group.record()),
        }
        state.history.append(record)
        return record

    def _account(
        self,
        rule: Rule,
        data: DataBundle,
        stats: EpochStats,
        first: bool,
        by_flops: bool,
        state: LoopState,
    ) -> float | None:
        """Book a training window into the state, then guard against divergence; the epoch's
        mean training loss (None: no step ran, or the run diverged)."""
        assert self._suite is not None
        full = stats.samples == int(data.train_x.shape[0])
        self._suite.after_train(state.cost, rule, state.phase, first, None if full else stats.steps)
        state.epoch_in_phase += 1
        state.samples, state.steps = state.samples + stats.samples, state.steps + stats.steps
        if not full:
            state.stopped_by = STOP_FLOPS if by_flops else STOP_SECONDS
        if stats.steps == 0:
            return None
        train_loss = (stats.loss_sum / stats.steps).item()
        if state.phase_loss is None and stats.first_loss is not None:
            state.phase_loss = stats.first_loss.item()
        epoch, factor = state.epoch + 1, self.config.divergence_factor
        why = divergence(rule, train_loss, state.phase_loss, factor, epoch)
        if why is not None:
            state.status, state.reason, state.stopped_by = "diverged", why, ""
            return None
        return train_loss

    def _limits(
        self, rule: Rule, state: LoopState, first: bool
    ) -> tuple[int | None, float | None] | None:
        """(steps, seconds) the compute ceilings leave this epoch; None when they leave none."""
        ceiling, suite = self.ceiling, self._suite
        if ceiling.flops is None and ceiling.seconds is None:
            return None, None
        assert suite is not None
        probe = suite.probe(rule, state.phase)
        step_flops = probe.step_flops if isinstance(probe, PhaseProbe) else None
        setup = probe.setup_flops if isinstance(probe, PhaseProbe) and first else 0
        max_steps = ceiling.steps_left(state.cost, step_flops, setup)
        seconds = ceiling.seconds_left(state.cost)
        if max_steps == 0 or (seconds is not None and seconds <= 0):
            state.stopped_by = STOP_FLOPS if max_steps == 0 else STOP_SECONDS
            return None
        return max_steps, seconds

    def _end_phase(
        self, rule: Rule, batches: torch.Generator, phases: list[Phase], state: LoopState
    ) -> None:
        if state.best is not None:
            restore_modules(rule, state.best)  # the phase's best weights, before moving on
        state.next_phase(self.config, len(phases))
        if state.phase < len(phases):
            self._checkpoint(rule, batches, state)

    def _checkpoint(self, rule: Rule, batches: torch.Generator, state: LoopState) -> None:
        if self.out is not None:
            save_checkpoint(self.out, self.config, rule, batches, state)

    # ---- the end ----------------------------------------------------------------------------
    def _finish(
        self,
        rule: Rule,
        data: DataBundle,
        phases: list[Phase],
        windows: Windows,
        state: LoopState,
    ) -> RunResult:
        """Test once (a completed run), write the result and the model."""
        test = None  # the phases' best weights are restored already (_end_phase)
        main = self.group is None or self.group.main  # the state is the same everywhere
        if state.status == "completed" and self.evaluate_test and main:
            assert self._suite is not None
            with windows.measure(TEST, state.cost):
                test = evaluate(rule, data.test_x, data.test_y, self.config.eval_batch_size)
            n_test = int(data.test_x.shape[0])
            self._suite.after_eval(state.cost, rule, len(phases) - 1, n_test, "test_flops")
        result = self._result(rule, data, state.status, state.reason, state, test)
        completed = state.status == "completed"
        self.rundir.write_result(result, rule.modules.state_dict() if completed else None)
        return result

    def _result(
        self,
        rule: Rule,
        data: DataBundle,
        status: str,
        reason: str,
        state: LoopState,
        test: tuple[float, float] | None = None,
    ) -> RunResult:
        cost = state.cost
        if self._suite is not None:  # derived totals; null + reason for anything unmeasured
            cost = self._suite.finish(cost)
        return build_result(self.config, rule, data, status, reason, state, cost, test, self.out)
