"""One tuning trial: settings from the rule's search space, one training run, one outcome.

The value is the monitored validation metric at the best epoch (validation accuracy by
default); the test set is never evaluated during tuning. Each epoch's value is reported to the
trial and the study's pruner may stop it. Whatever happens — complete, pruned, diverged,
crashed — the cost the trainer measured is written to the trial's user attributes, updated after
every epoch, so even a trial whose worker is killed keeps the cost of its finished epochs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bpfree.config import TrainConfig
from bpfree.data import DataBundle
from bpfree.engine import Trainer, build_rule, load_data
from bpfree.errors import BpfreeError, ConfigError
from bpfree.meters import Reading
from bpfree.rules import RULES

COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"
DUPLICATE = "duplicate ticket: its slot was already taken"  # a FAIL that is no failure


def settings_for(trial: Any, base: TrainConfig) -> TrainConfig:
    """The base config with the tuned hyperparameters ``Hparams.suggest(trial)`` drew.

    Fields the search space does not name keep the base config's values.
    """
    hp_cls = RULES.get(base.rule).Hparams
    hp = hp_cls.suggest(trial)
    drawn = hp.to_dict()
    tuned = set(trial.params)
    stray = sorted(tuned - set(drawn))
    if stray:
        raise ConfigError(f"rule {base.rule!r}: search-space names {stray} are not hyperparameters")
    return base.replace(hparams={**base.hparams, **{k: drawn[k] for k in tuned}})


def objective_value(metrics: dict[str, Any], monitor: str) -> float | None:
    return metrics.get(monitor)


@dataclass
class TrialOutcome:
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | None
    reason: str = ""
    config: TrainConfig | None = None
    cost: dict[str, Any] = field(default_factory=dict)
    epochs: int = 0
    error: BaseException | None = None  # a user mistake (BpfreeError) to re-raise after telling


def cost_record(
    readings: dict[str, Any], wall_s: float, cpu_s: float, *, partial: bool = False
) -> dict[str, Any]:
    """The JSON stored as a trial's ``cost``: the trainer's readings plus the whole trial's time.

    ``trial_wall_time_s`` covers the trial from claim to outcome (set-up, training, validation,
    pruning decisions); the trainer's readings cover only its timed windows. ``readings`` maps
    names to :class:`Reading` or its dict form.
    """
    return {
        "readings": {
            k: r.to_dict() if isinstance(r, Reading) else dict(r) for k, r in readings.items()
        },
        "trial_wall_time_s": wall_s,
        "trial_cpu_time_s": cpu_s,
        "partial": partial,
    }


class DataCache:
    """One worker loads the study's data once; every trial of the study shares the tensors
    (and so may the workers of several studies in one process: each rule is warmed up once)."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._data: DataBundle | None = None
        self._warm: set[tuple[str, str]] = set()

    def get(self, cfg: TrainConfig) -> DataBundle:
        key = (
            cfg.dataset,
            cfg.data_dir,
            cfg.val_fraction,
            cfg.data_seed,
            cfg.train_samples,
            cfg.device,
        )
        if key != self._key or self._data is None:
            self._data = load_data(cfg)
            self._key, self._warm = key, set()
        if (cfg.rule, cfg.model) not in self._warm:
            _warm_up(cfg, self._data)
            self._warm.add((cfg.rule, cfg.model))
        return self._data


def _warm_up(cfg: TrainConfig, data: DataBundle) -> None:
    """Build the rule once, untimed: torch imports parts lazily (optimizers take seconds), and
    that one-off cost belongs to the worker's start-up, not to whichever trial runs first."""
    rule = build_rule(cfg, data)
    with torch.no_grad():
        rule.predict(data.val_x[:2])


def run_trial(
    trial: Any, base: TrainConfig, data: DataCache, *, progress: bool = False
) -> TrialOutcome:
    """Train one sampled configuration; never raises for a failed run, only reports it."""
    import optuna

    wall0, cpu0 = time.perf_counter(), time.process_time()
    trainer: Trainer | None = None
    last_epoch = 0

    def spent(partial: bool, readings: dict[str, Any] | None = None) -> dict[str, Any]:
        if readings is None:  # the trainer's running totals (a run stopped early)
            readings = dict(trainer.cost) if trainer is not None else {}
        return cost_record(
            readings, time.perf_counter() - wall0, time.process_time() - cpu0, partial=partial
        )

    def on_epoch(record: dict[str, Any]) -> None:
        # Outside the trainer's timed windows: report, persist the cost so far, maybe prune.
        nonlocal last_epoch
        last_epoch = record["epoch"]
        value = record[base.monitor]
        trial.set_user_attr("cost", spent(partial=True))
        if value is None or not math.isfinite(value):
            return  # a non-finite value is no evidence for the pruner
        trial.report(value, record["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned by the study's pruner after epoch {record['epoch']}")

    config = None
    try:
        config = settings_for(trial, base)
        trial.set_user_attr("hparams", config.hparams)
        trainer = Trainer(
            config,
            None,
            progress=progress,
            data=data.get(config),
            on_epoch=on_epoch,
            evaluate_test=False,
        )
        result = trainer.run()
    except optuna.TrialPruned as exc:
        return TrialOutcome(PRUNED, None, str(exc), config, spent(False), last_epoch)
    except BpfreeError as exc:  # a user mistake: recorded, then re-raised by the worker
        return TrialOutcome(
            FAIL, None, f"{type(exc).__name__}: {exc}", config, spent(False), last_epoch, error=exc
        )
    except Exception as exc:  # a crash in this configuration: recorded, the study goes on
        return TrialOutcome(
            FAIL, None, f"{type(exc).__name__}: {exc}", config, spent(False), last_epoch
        )
    epochs = result.metrics.get("epochs_trained") or 0
    cost = spent(False, result.cost)  # the result's cost also holds the derived totals
    if result.status != "completed":
        return TrialOutcome(FAIL, None, f"{result.status}: {result.reason}", config, cost, epochs)
    value = objective_value(result.metrics, base.monitor)
    if value is None or not math.isfinite(value):
        reason = f"non-finite {base.monitor} ({value})"
        return TrialOutcome(FAIL, None, reason, config, cost, epochs)
    return TrialOutcome(COMPLETE, float(value), "", config, cost, epochs)
