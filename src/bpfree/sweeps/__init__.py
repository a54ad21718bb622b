"""Equal-budget hyperparameter sweeps on Optuna, from one laptop to many machines.

``create_or_join`` stores a study's budget and base settings; ``Worker``/``work`` claim and run
its trials until exactly ``n_trials`` are finished; ``summarize`` and ``export_best`` read the
result. ``run_study`` does all of it for one rule (what ``bpfree compare`` builds on). Optuna is
imported lazily: ``pip install 'bpfree[sweep]'``.
"""

from bpfree.sweeps.budget import Budget, search_space
from bpfree.sweeps.report import SweepSummary, best_toml, export_best, summarize, sweep_cost
from bpfree.sweeps.storage import open_storage, resolve_url
from bpfree.sweeps.study import SweepError, SweepSpec, create_or_join, load_spec
from bpfree.sweeps.worker import Worker, WorkReport, run_study, work

__all__ = [
    "Budget",
    "SweepError",
    "SweepSpec",
    "SweepSummary",
    "WorkReport",
    "Worker",
    "best_toml",
    "create_or_join",
    "export_best",
    "load_spec",
    "open_storage",
    "resolve_url",
    "run_study",
    "search_space",
    "summarize",
    "sweep_cost",
    "work",
]
