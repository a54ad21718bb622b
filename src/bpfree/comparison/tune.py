"""Equal-budget tuning inside a comparison (``bpfree compare --tune N``).

Before the seeded runs, every rule variant and every distinct backprop twin ``bp@<model>`` gets
one Optuna study (:mod:`bpfree.sweeps`), all created with one :class:`~bpfree.sweeps.Budget`
(trials, sampler and its seed, pruner, failure limits) and the same base settings apart from the
rule and its fixed hyperparameters: epoch cap and training subset of the tuning trials,
patience, validation split, run seed (the comparison's first seed). A twin shared by two
variants on one network is tuned once, so every (rule, twin) pair still had equal budgets.

Study names come from the comparison itself (``cmp-<digest>-<label>``), so rerunning the same
command continues the same studies, and several processes running it share their trials. The
seeded runs then train with each study's best hyperparameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bpfree.config import TrainConfig
from bpfree.sweeps.budget import Budget
from bpfree.sweeps.objective import DataCache
from bpfree.sweeps.report import summarize
from bpfree.sweeps.study import SweepError, create_or_join
from bpfree.sweeps.worker import Worker

POLL_S = 1.0  # nothing to claim in any study: look again after this long


@dataclass(frozen=True)
class Target:
    """One study to run: a label (rule variant or ``bp@<model>``) and its base settings."""

    label: str
    study: str
    base: TrainConfig
    first: dict[str, Any] | None = None  # trial 0's settings (None: the base's, projected)


def study_name(prefix: str, label: str) -> str:
    return f"{prefix}-{label}"


def tune_all(
    targets: list[Target],
    budget: Budget,
    storage: str,
    *,
    log: Callable[[str], None],
    progress: bool | None = False,
) -> dict[str, dict[str, Any]]:
    """Run every target's study to exactly ``budget.n_trials`` finished trials.

    All studies are created (or joined) first; then this process claims trials from whichever
    study has one waiting, round-robin, instead of idling while other processes run a study's
    last trials. Returns ``{label: record}`` with each study's best settings.
    """
    cache = DataCache()  # one dataset load for every study of this process
    workers: dict[str, Worker] = {}
    for t in targets:
        spec = create_or_join(t.study, storage, base=t.base, budget=budget, first=t.first)

        def on_trial(trial: Any, label: str = t.label, metric: str = spec.base.monitor) -> None:
            value = "" if trial.value is None else f", {metric} {trial.value:.4f}"
            log(f"  tuning {label}: trial {trial.number} {trial.state.name.lower()}{value}")

        workers[t.label] = Worker(spec, progress=bool(progress), on_trial=on_trial, data=cache)
    pending = [t.label for t in targets]
    while pending:
        worked = False
        for label in list(pending):
            report = workers[label].work(wait=False)
            worked = worked or bool(report.trials)
            if report.status == "complete":
                pending.remove(label)
        if pending and not worked:
            time.sleep(POLL_S)  # other processes are running the last trials
    records: dict[str, dict[str, Any]] = {}
    for t in targets:
        summary = summarize(t.study, storage)
        if summary.best is None:
            raise SweepError(
                f"study {t.study!r} ({t.label}) finished without a complete trial (all pruned?); "
                "use more trials (--tune) or --set a smaller learning rate range"
            )
        records[t.label] = {
            "study": t.study,
            "best_trial": summary.best["number"],
            "best_value": summary.best["value"],
            "metric": summary.best["metric"],
            "tuned": summary.best["params"],
            "hparams": summary.best["hparams"],
            "counts": summary.counts,
            "trial_wall_time_s": summary.cost.get("trial_wall_time_s"),
        }
        log(
            f"tuned {t.label} ({t.study}): trial {summary.best['number']}, "
            f"{summary.best['metric']} {summary.best['value']:.4f}, "
            + ", ".join(f"{k}={_short(v)}" for k, v in summary.best["params"].items())
        )
    return records


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
