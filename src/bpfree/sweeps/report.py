"""What a study holds: state counts, the best settings, and the cost of every trial, summed.

The sweep's cost is the sum over *all* its trials — complete, pruned and failed — of what each
trial recorded: the trainer's readings (training and evaluation time, energy where a meter
gives it; peaks take the maximum) plus the whole trial's wall and CPU time. A trial whose worker
was killed counts up to its last finished epoch (its cost is written after every epoch).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfree.engine.io import write_text
from bpfree.errors import ConfigError, shorten
from bpfree.meters.base import Reading, add, format_reading, peak
from bpfree.sweeps.objective import COMPLETE, DUPLICATE, FAIL, PRUNED
from bpfree.sweeps.storage import import_optuna, open_storage, redact, resolve_url, sqlite_missing
from bpfree.sweeps.study import find_study, wait_ready

# How a reading of each unit folds over trials: time, energy, work and carbon add up; memory
# peaks take the maximum; rates and ratios (W, FLOP/s, utilisation) are not totalled.
FOLD = {"s": add, "J": add, "FLOP": add, "g": add, "B": peak}


def sweep_cost(trials: list[Any]) -> dict[str, Any]:
    """Sum the recorded cost of every trial (see the module docstring)."""
    readings: dict[str, Reading] = {}
    counted: dict[str, int] = {}
    with_cost = 0
    by_state: dict[str, dict[str, float]] = {}
    wall = cpu = 0.0
    without: list[int] = []
    for t in trials:
        cost = t.user_attrs.get("cost")
        if not cost:
            if t.state.name not in ("WAITING",) and t.user_attrs.get("reason") is None:
                without.append(t.number)  # killed before its first epoch, or still running
            continue
        with_cost += 1
        wall += cost["trial_wall_time_s"]
        cpu += cost["trial_cpu_time_s"]
        state = by_state.setdefault(t.state.name, {"trials": 0, "trial_wall_time_s": 0.0})
        state["trials"] += 1
        state["trial_wall_time_s"] += cost["trial_wall_time_s"]
        for name, data in cost["readings"].items():
            fold = FOLD.get(data.get("unit", ""))
            if fold is not None:
                readings[name] = fold(readings.get(name), Reading.from_dict(data))
                counted[name] = counted.get(name, 0) + 1
    for name, n in counted.items():
        if n < with_cost:  # e.g. totals a run derives only when it finishes
            r = readings[name]
            readings[name] = Reading(r.value, r.unit, r.source, f"from {n} of {with_cost} trials")
    return {
        "trial_wall_time_s": wall,
        "trial_cpu_time_s": cpu,
        "readings": {k: r.to_dict() for k, r in sorted(readings.items())},
        "by_state": by_state,
        "trials_without_cost": without,
        "note": "sum over every trial (complete, pruned, failed); worker-seconds, not elapsed",
    }


def record_totals(study: Any) -> dict[str, Any]:
    """Store the sweep's cost and state counts in the study (idempotent; any worker may)."""
    trials = study.get_trials(deepcopy=False)
    totals = sweep_cost(trials)
    study.set_user_attr("cost", totals)
    return totals


@dataclass
class SweepSummary:
    study: str
    storage: str  # redacted
    status: str  # complete | running | gave_up
    finished: int
    n_trials: int
    counts: dict[str, int]
    base_config: dict[str, Any]
    budget: dict[str, Any]
    best: dict[str, Any] | None
    cost: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def format(self) -> str:
        c, b = self.base_config, self.budget
        states = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()))
        pruner = (
            "no pruner"
            if b["pruner"] == "none"
            else f"median pruner (after {b['pruner_startup_trials']} trials, "
            f"from epoch {b['pruner_warmup_epochs']})"
        )
        lines = [
            f"study {self.study} in {self.storage}: {self.status}, "
            f"{self.finished}/{self.n_trials} finished ({states or 'no trials'})",
            f"  {c['rule']} on {c['model']} / {c['dataset']}: epoch cap {c['epochs']}, "
            f"patience {c['patience']}, train_samples {c['train_samples']}, seed {c['seed']}",
            f"  budget: {b['n_trials']} finished trials, TPE seed {b['sampler_seed']} "
            f"({b['startup_trials']} random start-up trials), {pruner}"
            + ("; trial 0: the base settings" if b.get("defaults_first") else ""),
        ]
        if self.best is not None:
            hp = ", ".join(f"{k}={_short(v)}" for k, v in self.best["params"].items())
            lines.append(
                f"  best: trial {self.best['number']}, {self.best['metric']} "
                f"{self.best['value']:.4f} ({hp})"
            )
        cost = self.cost
        if cost:
            parts = [
                f"{cost['trial_wall_time_s']:.1f} s trial wall time",
                f"{cost['trial_cpu_time_s']:.1f} s CPU",
            ]
            readings = cost["readings"]
            parts += [
                f"{k} {format_reading(r)}"
                + (f" ({r['note']})" if r["note"].startswith("from") else "")
                for k, r in readings.items()
                if r["value"] is not None
            ]
            lines.append("  cost of all trials: " + ", ".join(parts))
            missing = [k for k, r in readings.items() if r["value"] is None]
            if missing:
                lines.append("  not measured here: " + ", ".join(missing))
        return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summarize(study: str, storage: str | None = None) -> SweepSummary:
    """The state of study ``study``: counts, best trial, budget and total cost."""
    optuna = import_optuna()
    url = resolve_url(storage)
    if sqlite_missing(url):
        raise ConfigError(f"no study {shorten(study)} in {redact(url)}: the file does not exist")
    loaded = find_study(optuna, study, open_storage(url))
    if loaded is None:
        raise ConfigError(f"no study {study!r} in {redact(url)}")
    attrs = wait_ready(loaded, study)
    trials = loaded.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    budget, base = attrs["budget"], attrs["base_config"]
    finished = counts.get(COMPLETE, 0) + counts.get(PRUNED, 0)
    failures = sum(
        1 for t in trials if t.state.name == FAIL and t.user_attrs.get("reason") != DUPLICATE
    )
    cap = (
        budget["n_trials"]
        if budget.get("max_failed_trials") is None
        else budget["max_failed_trials"]
    )
    status = (
        "complete" if finished >= budget["n_trials"] else "gave_up" if failures > cap else "running"
    )
    best = None
    complete = [t for t in trials if t.state.name == COMPLETE and t.value is not None]
    if complete:
        pick = max if loaded.direction.name == "MAXIMIZE" else min
        t = pick(complete, key=lambda t: t.value)
        best = {
            "number": t.number,
            "value": t.value,
            "metric": base["monitor"],
            "params": dict(t.params),
            "hparams": t.user_attrs.get("hparams") or {**base["hparams"], **t.params},
        }
    return SweepSummary(
        study,
        redact(url),
        status,
        finished,
        budget["n_trials"],
        counts,
        base,
        budget,
        best,
        sweep_cost(trials),
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise ConfigError(f"cannot write {value!r} to TOML")


def best_toml(summary: SweepSummary) -> str:
    """A config file for ``bpfree train --config``: the base settings plus the best hparams."""
    if summary.best is None:
        raise ConfigError(f"study {summary.study} has no complete trial yet; nothing to export")
    best, base = summary.best, summary.base_config
    lines = [
        f"# Best settings of bpfree sweep {summary.study!r}: trial {best['number']}, "
        f"{best['metric']} {best['value']:.4f} ({summary.status}, "
        f"{summary.finished}/{summary.n_trials} trials finished).",
        "# epochs and train_samples are the sweep's; for a full run override them, e.g.",
        "#   bpfree train --config best.toml --epochs 30 --set train_samples=none",
    ]
    for key, value in base.items():
        if key != "hparams" and value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    lines.append("")
    lines.append("[hparams]")
    for key, value in best["hparams"].items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def export_best(study: str, storage: str | None, path: str | Path) -> Path:
    """Write the best settings of ``study`` to ``path`` (TOML); returns the path."""
    target = Path(path)
    write_text(target, best_toml(summarize(study, storage)))
    return target
