"""The trainer owns the loop, the clock, evaluation, early stopping, checkpoints and the run dir.

Per phase of the rule (one for most rules; one per layer for sequential ones):

    for each epoch:
        [window "train"]  permute indices, rule.train_step on each batch
        [window "eval"]   validation accuracy / loss
        early stopping on the monitored metric; remember the best weights
        checkpoint (outside both windows)
    restore the phase's best weights

then the test set is evaluated once. Nothing runs per step in the timed window except the
rule's own update and the batch indexing (no ``.item()``, no callbacks, no logging).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bpfree.config import TrainConfig
from bpfree.data import DataBundle
from bpfree.engine.build import build_rule, load_data
from bpfree.engine.checkpoint import CHECKPOINT, restore, save_checkpoint
from bpfree.engine.environment import describe, resolve_device
from bpfree.engine.loop import evaluate, train_epoch
from bpfree.engine.result import RunResult, rule_card
from bpfree.engine.rundir import RunDir
from bpfree.engine.seeding import generator
from bpfree.engine.state import LoopState, new_stopper
from bpfree.engine.windows import EVAL, TRAIN, Windows
from bpfree.errors import BpfreeError
from bpfree.meters import Reading
from bpfree.meters.suite import MeterSuite
from bpfree.progress import progress_bar
from bpfree.rules import Phase, Rule

__all__ = ["CHECKPOINT", "RunInterrupted", "Trainer", "evaluate", "train", "train_epoch"]


class RunInterrupted(BpfreeError):
    """Ctrl-C or SIGTERM during a run; the run directory holds a resumable checkpoint."""

    exit_code = 130


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so a killed run still leaves a consistent run directory."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _clone_modules(rule: Rule) -> dict[str, Any]:
    return {
        "modules": {k: v.detach().clone() for k, v in rule.modules.state_dict().items()},
        "extra": rule.extra_state(),
    }


def _restore_modules(rule: Rule, best: dict[str, Any]) -> None:
    rule.modules.load_state_dict(best["modules"])
    rule.load_extra_state(best["extra"])


def effective_phases(rule: Rule, config: TrainConfig) -> list[Phase]:
    """The rule's phases, each with its effective epoch cap (so a rule can plan over it)."""
    return [
        dataclasses.replace(p, max_epochs=min(config.epochs, p.max_epochs or config.epochs))
        for p in rule.phases()
    ]


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
    ) -> None:
        """``on_epoch(record)`` observes each epoch's metrics record, outside the timed windows
        (it may raise to stop the run, e.g. a pruned tuning trial; it never changes training).
        ``evaluate_test=False`` skips the final test evaluation: tuning trials must not see the
        test set. ``self.cost`` holds the cost readings accumulated so far, also after a hook
        raised."""
        self.config = config
        self.out = Path(out) if out is not None else None
        self.rundir = RunDir(self.out, resume)
        self.progress = progress
        self.data = data
        self.on_epoch = on_epoch
        self.evaluate_test = evaluate_test
        self.cost: dict[str, Reading] = {}
        self._suite: MeterSuite | None = None

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> RunResult:
        finished = self.rundir.finished()
        if finished is not None:
            return finished
        ckpt = self.rundir.checkpoint(self.config)
        device = resolve_device(self.config.device)
        if self.data is None:
            self.data = load_data(self.config, device)
        rule = build_rule(self.config, self.data, device)
        self.rundir.start(self.config, describe(device))
        with _sigterm_as_interrupt():
            return self._train(rule, self.data, device, ckpt)

    def _train(
        self, rule: Rule, data: DataBundle, device: torch.device, ckpt: dict[str, Any] | None
    ) -> RunResult:
        cfg = self.config
        batches = generator(cfg.seed, "batches")  # CPU: permutations are drawn on the host
        suite = self._suite = MeterSuite(cfg, device, data)  # before training: baselines
        windows = Windows({TRAIN: suite.train, EVAL: suite.evaluation})
        phases = effective_phases(rule, cfg)
        state = self._initial_state(rule, data, phases, batches, ckpt)
        try:
            while state.phase < len(phases):
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
            restore(rule, batches, ckpt)
            state = LoopState.from_checkpoint(ckpt)
            if state.epoch_in_phase > 0:  # mid-phase: rebuild the phase's parts, then its state
                rule.begin_phase(phases[state.phase], data.train_x, data.train_y)
                rule.load_state_dict(ckpt["rule"])
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
        """Epochs of the current phase until its cap, early stopping or divergence."""
        phase = phases[state.phase]
        cap = phase.max_epochs or self.config.epochs
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
                if record is None:  # diverged
                    return
                bar.update(1)
                bar.set_postfix(val_acc=f"{record['val_accuracy']:.4f}")
                self._checkpoint(rule, batches, state)
                self.rundir.append_metrics(record)  # after the checkpoint: resume rewrites it
                if self.on_epoch is not None:
                    self.on_epoch(record)

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
        """One training window and one evaluation window; the epoch's record (None: diverged)."""
        suite, first = self._suite, state.epoch_in_phase == 0
        assert suite is not None
        if first:  # probe the phase on a copy, before the window
            suite.before_phase(rule, state.phase, phase)
        rule.train()
        with windows.measure(TRAIN, state.cost) as train:
            if first:
                rule.begin_phase(phase, data.train_x, data.train_y)
            loss_sum, steps = train_epoch(rule, data, batches, rule.hp.batch_size, device)
        suite.after_train(state.cost, rule, state.phase, first_epoch=first)
        train_loss = (loss_sum / steps).item()
        state.epoch_in_phase += 1
        epoch = state.epoch + 1
        if not math.isfinite(train_loss):
            state.status = "diverged"
            state.reason = f"non-finite training loss ({train_loss}) in epoch {epoch}"
            return None
        with windows.measure(EVAL, state.cost) as ev:
            val_acc, val_loss = evaluate(rule, data.val_x, data.val_y, self.config.eval_batch_size)
        suite.after_eval(state.cost, rule, state.phase, int(data.val_x.shape[0]))
        value = val_acc if self.config.monitor == "val_accuracy" else val_loss
        improved = state.stopper.update(value, epoch)
        if improved:
            state.best = _clone_modules(rule)
        record = {
            "epoch": epoch,
            "phase": phase.name,
            "epoch_in_phase": state.epoch_in_phase,
            "train_loss": train_loss,
            "val_accuracy": val_acc,
            "val_loss": val_loss,
            "improved": improved,
            "train_wall_time_s": train.wall_s,
            "eval_wall_time_s": ev.wall_s,
        }
        state.history.append(record)
        return record

    def _end_phase(
        self, rule: Rule, batches: torch.Generator, phases: list[Phase], state: LoopState
    ) -> None:
        if state.best is not None:
            _restore_modules(rule, state.best)  # the phase's best weights, before moving on
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
        test = None
        if state.status == "completed" and self.evaluate_test:
            assert self._suite is not None
            with windows.measure(EVAL, state.cost):
                test = evaluate(rule, data.test_x, data.test_y, self.config.eval_batch_size)
            self._suite.after_eval(state.cost, rule, len(phases) - 1, int(data.test_x.shape[0]))
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
        cfg, history = self.config, state.history
        cost = state.cost
        if self._suite is not None:  # derived totals; null + reason for anything unmeasured
            cost = self._suite.finish(cost)
        best_epoch = state.stopper.best_epoch if state.stopper.best_epoch > 0 else None
        best_record = next((h for h in history if h["epoch"] == best_epoch), None)
        phases: dict[str, dict[str, Any]] = {}
        for h in history:
            p = phases.setdefault(h["phase"], {"epochs": 0, "best_epoch": None})
            p["epochs"] += 1
            if h["improved"]:
                p["best_epoch"] = h["epoch"]
        metrics = {
            "test_accuracy": test[0] if test else None,
            "test_loss": test[1] if test else None,
            "val_accuracy": best_record["val_accuracy"] if best_record else None,
            "val_loss": best_record["val_loss"] if best_record else None,
            "best_epoch": best_epoch,
            "epochs_trained": len(history),
            "phases": phases,
            "num_parameters": rule.num_parameters(),
        }
        return RunResult(
            status=status,
            reason=reason,
            rule=cfg.rule,
            model=str(cfg.model),
            dataset=cfg.dataset,
            seed=cfg.seed,
            metrics=metrics,
            cost={k: r.to_dict() for k, r in cost.items()},
            config=cfg.to_dict(),
            rule_info=rule_card(rule.info),
            data=data.info,
            run_dir=self.out,
        )


def train(
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    config: TrainConfig | None = None,
    **settings: Any,
) -> RunResult:
    """Train one rule on one model and dataset. See :class:`TrainConfig` for the settings."""
    if config is None:
        config = TrainConfig.build(settings)
    elif settings:
        config = config.replace(**settings)
    return Trainer(config, out, resume=resume, progress=progress).run()
