"""``bpfree.sweep(...)``: tune one rule with Optuna under a stored budget, from Python."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bpfree.config import apply_sets
from bpfree.sweeps.report import SweepSummary, summarize
from bpfree.sweeps.study import create_or_join
from bpfree.sweeps.worker import Worker


def sweep(
    *,
    study: str,
    rule: str | None = None,
    dataset: str | None = None,
    trials: int | None = None,
    storage: str | None = None,
    sets: list[str] | None = None,
    budget: dict[str, Any] | None = None,
    max_trials: int | None = None,
    progress: bool = False,
    on_trial: Callable[[Any], None] | None = None,
    **settings: Any,
) -> SweepSummary:
    """Create (or join) study ``study`` and run its trials here until it holds exactly
    ``trials`` finished ones (or ``max_trials`` ran in this process); return its summary.

    ``settings`` are the base run settings (``model``, ``epochs``, ``train_samples``, ...),
    ``sets`` ``--set``-style items, ``budget`` further :class:`~bpfree.sweeps.Budget` fields
    (``sampler_seed``, ``pruner``, ...). Joining an existing study, only repeat its settings.
    """
    base: dict[str, Any] = {k: v for k, v in settings.items() if v is not None}
    for key, value in (("rule", rule), ("dataset", dataset)):
        if value is not None:
            base[key] = value
    if sets:
        base = apply_sets(base, sets)
    plan = {k: v for k, v in (budget or {}).items() if v is not None}
    if trials is not None:
        plan["n_trials"] = trials
    spec = create_or_join(study, storage, base=base or None, budget=plan or None)
    Worker(spec, progress=progress, on_trial=on_trial).work(max_trials)
    return summarize(spec.name, spec.storage)
