"""The trainer owns the loop, the clock, evaluation, early stopping, checkpoints and the run dir.

Per phase of the rule (one for most rules; one per layer for sequential ones):

    for each epoch:
        [timed training window]  permute indices, rule.train_step on each batch
        [timed eval window]      validation accuracy / loss
        early stopping on the monitored metric; remember the best weights
        checkpoint (outside both windows)
    restore the phase's best weights

then the test set is evaluated once. Nothing runs per step in the timed window except the
rule's own update and the batch indexing (no ``.item()``, no callbacks, no logging).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bpfree.config import TrainConfig
from bpfree.data import DataBundle, load_dataset
from bpfree.engine.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from bpfree.engine.early_stopping import EarlyStopping
from bpfree.engine.environment import describe, resolve_device
from bpfree.engine.io import read_json, save_torch, write_json, write_text
from bpfree.engine.result import RunResult
from bpfree.engine.seeding import derive_seed, generator
from bpfree.errors import BpfreeError, ConfigError
from bpfree.meters import Meter, Reading
from bpfree.meters.suite import MeterSuite
from bpfree.models import create_model
from bpfree.progress import progress_bar
from bpfree.rules import Batch, Rule, create_rule


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


@torch.no_grad()
def evaluate(rule: Rule, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``rule.predict`` on (x, y)."""
    rule.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    loss = torch.zeros((), device=x.device)
    for start in range(0, x.shape[0], batch_size):
        logits = rule.predict(x[start : start + batch_size])  # (b, C)
        target = y[start : start + batch_size]
        correct += (logits.argmax(dim=1) == target).sum()
        loss += F.cross_entropy(logits, target, reduction="sum")
    n = max(int(x.shape[0]), 1)
    return correct.item() / n, loss.item() / n


def train_epoch(
    rule: Rule, data: DataBundle, batches: torch.Generator, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """One pass over the training set in a fresh random order: the body of a timed window.

    Returns the summed (detached) step losses and the step count; nothing here syncs the host.
    """
    n = data.train_x.shape[0]
    perm = torch.randperm(n, generator=batches).to(device)  # (n,)
    loss_sum = torch.zeros((), device=device)
    steps = 0
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]  # (b,)
        loss_sum += rule.train_step(Batch(data.train_x[idx], data.train_y[idx], idx))
        steps += 1
    return loss_sum, steps


def _clone_modules(rule: Rule) -> dict[str, Any]:
    return {
        "modules": {k: v.detach().clone() for k, v in rule.modules.state_dict().items()},
        "extra": rule.extra_state(),
    }


def _restore_modules(rule: Rule, best: dict[str, Any]) -> None:
    rule.modules.load_state_dict(best["modules"])
    rule.load_extra_state(best["extra"])


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
        self.resume = resume
        self.progress = progress
        self.data = data
        self.on_epoch = on_epoch
        self.evaluate_test = evaluate_test
        self.cost: dict[str, Reading] = {}
        self._suite: MeterSuite | None = None

    # ---- run directory ----------------------------------------------------------------------
    def _check_run_dir(self) -> dict[str, Any] | None:
        """Return the checkpoint to resume from (or None); refuse to clobber another run."""
        if self.out is None:
            if self.resume:
                raise ConfigError("--resume needs --out (the run directory to continue)")
            return None
        ckpt, result = self.out / CHECKPOINT, self.out / "result.json"
        if not self.resume:
            if ckpt.exists() or result.exists():
                raise ConfigError(
                    f"{self.out} already holds a run; pass --resume to continue it "
                    "or choose another --out"
                )
            return None
        return load_checkpoint(self.out, self.config)

    def _finished_result(self) -> RunResult | None:
        if self.out is None or not self.resume:
            return None
        path = self.out / "result.json"
        if path.exists() and not (self.out / CHECKPOINT).exists():
            data = read_json(path)
            if data.get("status") in ("completed", "diverged"):
                return RunResult.from_dict(data, self.out)
        return None

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> RunResult:
        finished = self._finished_result()
        if finished is not None:
            return finished
        checkpoint = self._check_run_dir()
        cfg = self.config
        device = resolve_device(cfg.device)
        if self.data is None:
            self.data = load_dataset(
                cfg.dataset,
                data_dir=cfg.data_dir,
                val_fraction=cfg.val_fraction,
                data_seed=cfg.data_seed,
                train_samples=cfg.train_samples,
                device=device,
            )
        data = self.data
        rule = create_rule(cfg.rule, cfg.hparams)
        # Parameter initialisation draws from the global RNG: seed it from the run seed, and
        # keep the caller's RNG state untouched.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(derive_seed(cfg.seed, "init"))
            model = create_model(cfg.model, data.input_shape)
            rule.setup(model, data.num_classes, device, generator(cfg.seed, "rule", device))
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "config.json", cfg.to_dict())
            write_json(self.out / "env.json", describe(device))
        with _sigterm_as_interrupt():
            return self._loop(rule, data, device, checkpoint)

    def _loop(
        self, rule: Rule, data: DataBundle, device: torch.device, ckpt: dict[str, Any] | None
    ) -> RunResult:
        cfg = self.config
        hp_batch = rule.hp.batch_size
        batches = generator(cfg.seed, "batches")  # CPU: permutations are drawn on the host
        suite = self._suite = MeterSuite(cfg, device, data)  # before training: baselines
        train_meters, eval_meters = suite.train, suite.evaluation
        cost: dict[str, Reading] = {}
        self.cost = cost  # live: a hook that stops the run still leaves what was spent
        history: list[dict[str, Any]] = []
        # Each phase carries its effective epoch cap, so a rule can plan a schedule over it.
        phases = [
            dataclasses.replace(p, max_epochs=min(cfg.epochs, p.max_epochs or cfg.epochs))
            for p in rule.phases()
        ]
        phase_i, epoch_in_phase, best = 0, 0, None
        mode = "max" if cfg.monitor == "val_accuracy" else "min"
        stopper = EarlyStopping(mode, cfg.patience, cfg.min_delta)
        if ckpt is not None:
            rule.load_state_dict(ckpt["rule"])
            batches.set_state(ckpt["batch_generator"])
            assert rule.generator is not None
            rule.generator.set_state(
                ckpt["rule_generator"].to(rule.generator.device)
                if rule.generator.device.type != "cpu"
                else ckpt["rule_generator"]
            )
            cost = {k: Reading.from_dict(v) for k, v in ckpt["cost"].items()}
            self.cost = cost
            history = ckpt["history"]
            phase_i, epoch_in_phase, best = ckpt["phase"], ckpt["epoch_in_phase"], ckpt["best"]
            stopper = EarlyStopping(**ckpt["early_stopping"])
            if epoch_in_phase > 0:  # mid-phase: rebuild the phase's parts, then its state
                rule.begin_phase(phases[phase_i], data.train_x, data.train_y)
                rule.load_state_dict(ckpt["rule"])
            if self.out is not None:
                write_text(
                    self.out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history)
                )
        elif self.out is not None:
            write_text(self.out / "metrics.jsonl", "")

        def accumulate(meters: list[Meter], readings: list[Reading]) -> None:
            for m, r in zip(meters, readings, strict=True):
                cost[m.name] = m.combine(cost.get(m.name), r)

        status, reason = "completed", ""
        try:
            while phase_i < len(phases):
                phase = phases[phase_i]
                cap = phase.max_epochs or cfg.epochs  # the phase's own cap (set above)
                bar = progress_bar(
                    total=cap,
                    initial=epoch_in_phase,
                    desc=f"{cfg.rule} {phase.name}",
                    unit="epoch",
                    disable=None if self.progress is None else not self.progress,
                )
                with bar:
                    while epoch_in_phase < cap and not stopper.should_stop:
                        if epoch_in_phase == 0:  # probe the phase on a copy, before the window
                            suite.before_phase(rule, phase_i, phase)
                        # ---- timed training window ----
                        rule.train()
                        for m in train_meters:
                            m.start()
                        if epoch_in_phase == 0:
                            rule.begin_phase(phase, data.train_x, data.train_y)
                        loss_sum, steps = train_epoch(rule, data, batches, hp_batch, device)
                        readings = [m.stop() for m in reversed(train_meters)][::-1]
                        accumulate(train_meters, readings)
                        suite.after_train(cost, rule, phase_i, first_epoch=epoch_in_phase == 0)
                        train_loss = (loss_sum / steps).item()
                        epoch_in_phase += 1
                        epoch = len(history) + 1
                        if not math.isfinite(train_loss):
                            status = "diverged"
                            reason = f"non-finite training loss ({train_loss}) in epoch {epoch}"
                            break
                        # ---- timed evaluation window ----
                        for m in eval_meters:
                            m.start()
                        val_acc, val_loss = evaluate(
                            rule, data.val_x, data.val_y, cfg.eval_batch_size
                        )
                        eval_readings = [m.stop() for m in eval_meters]
                        accumulate(eval_meters, eval_readings)
                        suite.after_eval(cost, rule, phase_i, int(data.val_x.shape[0]))
                        value = val_acc if cfg.monitor == "val_accuracy" else val_loss
                        improved = stopper.update(value, epoch)
                        if improved:
                            best = _clone_modules(rule)
                        record = {
                            "epoch": epoch,
                            "phase": phase.name,
                            "epoch_in_phase": epoch_in_phase,
                            "train_loss": train_loss,
                            "val_accuracy": val_acc,
                            "val_loss": val_loss,
                            "improved": improved,
                            "train_wall_time_s": readings[-1].value,  # the wall timer is last
                            "eval_wall_time_s": eval_readings[-1].value,
                        }
                        history.append(record)
                        bar.update(1)
                        bar.set_postfix(val_acc=f"{val_acc:.4f}", loss=f"{train_loss:.4f}")
                        self._checkpoint(
                            rule, batches, cost, history, phase_i, epoch_in_phase, best, stopper
                        )
                        if self.out is not None:  # after the checkpoint: resume rewrites it
                            with open(self.out / "metrics.jsonl", "a") as f:
                                f.write(json.dumps(record) + "\n")
                        if self.on_epoch is not None:
                            self.on_epoch(record)
                if status != "completed":
                    break
                if best is not None:
                    _restore_modules(rule, best)  # the phase's best weights, before moving on
                phase_i, epoch_in_phase = phase_i + 1, 0
                if phase_i < len(phases):
                    best, stopper = None, EarlyStopping(mode, cfg.patience, cfg.min_delta)
                    self._checkpoint(rule, batches, cost, history, phase_i, 0, None, stopper)
        except KeyboardInterrupt:
            result = self._result(
                rule, data, "interrupted", "interrupted by the user", cost, history, stopper, None
            )
            if self.out is not None:
                write_json(self.out / "result.json", result.to_dict())
            raise RunInterrupted(
                "run interrupted"
                + (f"; continue it with --resume --out {self.out}" if self.out else "")
            ) from None

        test = None
        if status == "completed" and self.evaluate_test:
            for m in eval_meters:
                m.start()
            test = evaluate(rule, data.test_x, data.test_y, cfg.eval_batch_size)
            accumulate(eval_meters, [m.stop() for m in eval_meters])
            suite.after_eval(cost, rule, len(phases) - 1, int(data.test_x.shape[0]))
        result = self._result(rule, data, status, reason, cost, history, stopper, test)
        if self.out is not None:
            if status == "completed":
                save_torch(self.out / "model.pt", rule.modules.state_dict())
            write_json(self.out / "result.json", result.to_dict())
            (self.out / CHECKPOINT).unlink(missing_ok=True)
        return result

    def _checkpoint(
        self,
        rule: Rule,
        batches: torch.Generator,
        cost: dict[str, Reading],
        history: list[dict[str, Any]],
        phase: int,
        epoch_in_phase: int,
        best: dict[str, Any] | None,
        stopper: EarlyStopping,
    ) -> None:
        if self.out is not None:
            save_checkpoint(
                self.out,
                self.config,
                rule,
                batches,
                cost,
                history,
                phase,
                epoch_in_phase,
                best,
                stopper,
            )

    def _result(
        self,
        rule: Rule,
        data: DataBundle,
        status: str,
        reason: str,
        cost: dict[str, Reading],
        history: list[dict[str, Any]],
        stopper: EarlyStopping,
        test: tuple[float, float] | None,
    ) -> RunResult:
        cfg = self.config
        if self._suite is not None:  # derived totals; null + reason for anything unmeasured
            cost = self._suite.finish(cost)
        best_epoch = stopper.best_epoch if stopper.best_epoch > 0 else None
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
        info = rule.info
        return RunResult(
            status=status,
            reason=reason,
            rule=cfg.rule,
            model=cfg.model,
            dataset=cfg.dataset,
            seed=cfg.seed,
            metrics=metrics,
            cost={k: r.to_dict() for k, r in cost.items()},
            config=cfg.to_dict(),
            rule_info={
                "title": info.title,
                "citation": info.citation,
                "reverse_ad": info.reverse_ad,
                "backward_locking": info.backward_locking,
                "weight_transport": info.weight_transport,
                "forward_passes_per_step": info.forward_passes_per_step,
                "rule_version": info.rule_version,
            },
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
