"""``bpfree compare``: run the plan, reusing finished runs, then write the report.

With ``tune=N`` every rule variant and every backprop twin is first tuned with the same budget
(:mod:`bpfree.comparison.tune`); with ``storage=URL`` the tuning trials and the seeded runs are
shared by every process running the same comparison (:mod:`bpfree.comparison.queue`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfree.comparison.manifest import MANIFEST, build_manifest, check_manifest, digest, runs_record
from bpfree.comparison.plan import (
    BASELINE,
    Entry,
    GridRun,
    PlannedRun,
    assign_twins,
    build_plan,
    lr_grid_plan,
    one_process_plan,
    parse_entries,
    parse_seeds,
    split_sets,
)
from bpfree.comparison.queue import RunQueue
from bpfree.comparison.tune import Target, study_name, tune_all
from bpfree.config import TrainConfig
from bpfree.data import DataBundle
from bpfree.engine import RunResult, load_data, run_config
from bpfree.engine.io import write_json
from bpfree.errors import ConfigError, split_commas
from bpfree.reporting import write_report
from bpfree.rules import RULES
from bpfree.sweeps.budget import Budget, base_point, search_space
from bpfree.sweeps.storage import for_record, redact, resolve_url

TUNING_DB = "tuning.db"  # --tune without --storage: the studies live inside <out>


@dataclass
class Comparison:
    out: Path
    entries: list[Entry]
    plan: list[PlannedRun]
    results: dict[str, RunResult]
    tuning: dict[str, Any] | None = field(default=None)  # compare.json's "tuning" record
    grid: list[GridRun] = field(default_factory=list)  # learning-rate sensitivity runs


def _tuning_targets(
    plan: list[PlannedRun], entries: list[Entry], seed: int, overrides: dict[str, Any]
) -> list[tuple[str, TrainConfig, dict[str, Any]]]:
    """(label, base settings, first trial) of every study: each entry, then each distinct twin,
    on the comparison's first seed with the tuning epoch cap and training subset. The first
    trial is what the untuned comparison trains (a twin: its matched settings), projected onto
    the search space."""
    first = {r.label: r.config for r in plan if r.config.seed == seed}
    targets = []
    for e in entries:
        cfg = first[e.label]
        targets.append((e.label, cfg.replace(**overrides), base_point(cfg, search_space(cfg.rule))))
    for label in dict.fromkeys(e.twin for e in entries):
        # A twin keeps its rule's settings outside backprop's search space (e.g. a matched
        # lr schedule); what the search tunes starts from backprop's defaults.
        cfg = first[label]
        space = search_space(cfg.rule)
        defaults = RULES.get(cfg.rule).Hparams().to_dict()
        tuned = {k: defaults[k] for k in space}
        base = cfg.replace(**overrides, hparams={**cfg.hparams, **tuned})
        targets.append((label, base, base_point(cfg, space)))
    return targets


def _tuned(plan: list[PlannedRun], records: dict[str, dict[str, Any]]) -> list[PlannedRun]:
    """The plan with each label's best hyperparameters (keys and everything else unchanged)."""
    return [
        PlannedRun(r.key, r.label, r.config.replace(hparams=dict(records[r.label]["hparams"])))
        for r in plan
    ]


def compare(
    *,
    rules: str,
    dataset: str,
    out: str | Path,
    seeds: int | str | list[int] = 3,
    epochs: int | None = None,
    train_samples: int | None = None,
    sets: list[str] | None = None,
    models: dict[str, str] | None = None,
    data_dir: str | None = None,
    device: str | None = None,
    report: bool = True,
    progress: bool | None = None,
    log: Any = None,
    tune: int | None = None,
    tune_epochs: int | None = None,
    tune_train_samples: int | None = None,
    storage: str | None = None,
    budget: dict[str, Any] | None = None,
    twin: str = "matched",
    lr_grid: list[float] | None = None,
    one_process_reference: bool = False,
    only: str | None = None,
) -> Comparison:
    """Train each rule on its native network and backprop on the same network, then report.

    Interrupted and rerun with the same options, it reuses finished runs and resumes the
    interrupted one, so every run is done exactly once. ``epochs`` is the budget of every run
    in total data passes; ``twin="matched"`` (default) gives each backprop twin its rule's
    optimizer settings, ``"own"`` backprop's own defaults.

    ``tune=N``: first tune every rule variant and every backprop twin with N trials under one
    budget (``tune_epochs`` and ``tune_train_samples`` per trial, default the comparison's own;
    ``budget`` holds further :class:`~bpfree.sweeps.Budget` settings, e.g. ``sampler_seed``),
    then train the seeded runs with each study's best settings. The studies live in ``storage``,
    else in ``<out>/tuning.db``. ``storage=URL``: several processes running the same comparison
    share its tuning trials and seeded runs through that storage (``budget``'s heartbeat
    settings apply to both).

    ``lr_grid``: also train every rule and twin at each of these step sizes, on the first seed,
    scored on validation only (the report plots validation accuracy against lr).

    ``one_process_reference``: also train every parallel run (``stages`` or ``replicas`` > 1)
    of the first seed in one process, scored on validation only, so the report states the
    speedup over one process measured in this comparison.

    ``only="cafo,bp@cnn_3block"``: train only these rows' runs in this call (labels as in the
    report); the comparison, its plan and its manifest are unchanged, and a later call trains
    the rest, so a long comparison can be run in parts in the order its costs suggest. With
    ``storage``, the processes given the same ``only`` share those rows' runs.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out)
    labels = split_commas(rules, "--rules")
    base, scoped = split_sets(list(sets or []), labels)
    given = {"epochs": epochs, "train_samples": train_samples, "data_dir": data_dir}
    base.update({k: v for k, v in {**given, "device": device}.items() if v is not None})
    entries = parse_entries(rules, dataset, models, scoped)
    entries = assign_twins(entries, twin, scoped.get(BASELINE))
    seed_list = parse_seeds(seeds)
    plan = build_plan(entries, dataset, seed_list, base)
    grid = []
    if lr_grid:
        grid = lr_grid_plan(
            entries, dataset, seed_list[0], base, lr_grid, twin, scoped.get(BASELINE)
        )
    refs = one_process_plan(plan, seed_list[0]) if one_process_reference else []
    keep = _rows(only, plan)
    if tune is not None and tune < 1:
        raise ConfigError(f"--tune must be >= 1 trial per study, got {tune}")
    if tune is None and (tune_epochs is not None or tune_train_samples is not None):
        raise ConfigError("--tune-epochs and --tune-train-samples apply to tuning: add --tune N")
    plan_budget = Budget.from_dict({"n_trials": tune or 1, **(budget or {})})
    request = None
    if tune is not None:
        request = _tuning_request(tune, plan_budget, plan[0].config, seed_list[0])
        request["epochs"] = tune_epochs if tune_epochs is not None else request["epochs"]
        if tune_train_samples is not None:
            request["train_samples"] = tune_train_samples
    # The comparison's identity: its runs (without where data lives) and its tuning request.
    shared = [
        [r.key, {k: v for k, v in r.config.to_dict().items() if k != "data_dir"}]
        for r in [*plan, *grid, *refs]
    ]
    prefix = "cmp-" + digest(shared, request)
    manifest = build_manifest(dataset, seed_list, entries, plan, grid, twin, request, refs)
    url = None
    if storage is not None:
        url = resolve_url(storage)
        manifest["shared"] = {"storage": for_record(url), "runs_study": f"{prefix}-runs"}
    out.mkdir(parents=True, exist_ok=True)
    check_manifest(out, manifest)
    tuning = None
    if request is not None:
        plan, tuning = _tune(out, url, prefix, plan, entries, plan_budget, request, log, progress)
        refs = one_process_plan(plan, seed_list[0]) if refs else []  # the tuned settings
        manifest["tuning"] = tuning
        manifest["runs"] = runs_record(plan)
        write_json(out / MANIFEST, manifest)
    whole = plan  # a shared queue holds every run; --only picks which this process trains
    if keep is not None:
        plan = [r for r in plan if r.label in keep]
        grid = [g for g in grid if g.base in keep]
        refs = [r for r in refs if r.label in keep]
        log(f"training only {', '.join(sorted(keep))}: {len(plan)} of the comparison's runs")
    data = load_data(plan[0].config)
    if url is not None:
        queue = RunQueue(
            f"{prefix}-runs",
            url,
            whole,
            out,
            heartbeat_interval_s=plan_budget.heartbeat_interval_s,
            grace_period_s=plan_budget.grace_period_s,
            log=log,
        )
        results = queue.work(lambda run: _train(out, run, data, progress, True), keep)
    else:
        results = _run_local(out, plan, data, progress, log)
    _run_local(out, grid, data, progress, log, test=False)
    _run_local(out, refs, data, progress, log, test=False, kind=" (one process, for the speedup)")
    comparison = Comparison(out, entries, plan, results, tuning, grid)
    if report:
        write_report(out)
    return comparison


def _rows(only: str | None, plan: list[PlannedRun]) -> set[str] | None:
    """The labels ``only`` names (None: every row), each a row of the plan."""
    if only is None:
        return None
    labels = list(dict.fromkeys(r.label for r in plan))
    wanted = split_commas(only, "--only")
    for label in wanted:
        if label not in labels:
            raise ConfigError(
                f"--only {label!r} is not a row of this comparison; its rows: {', '.join(labels)}"
            )
    return set(wanted)


def _tuning_request(trials: int, budget: Budget, first: TrainConfig, seed: int) -> dict[str, Any]:
    return {
        "trials": trials,
        "budget": budget.to_dict(),
        "sampler_pruner": budget.describe(),
        "epochs": first.epochs,
        "train_samples": first.train_samples,
        "seed": seed,
    }


def _tune(
    out: Path,
    url: str | None,
    prefix: str,
    plan: list[PlannedRun],
    entries: list[Entry],
    budget: Budget,
    request: dict[str, Any],
    log: Any,
    progress: bool | None,
) -> tuple[list[PlannedRun], dict[str, Any]]:
    """Tune every entry and twin under one budget; the plan with each one's best settings."""
    tune_url = url or resolve_url(str((out / TUNING_DB).resolve()))
    where = for_record(url) if url is not None else f"{TUNING_DB} in the comparison directory"
    overrides = {"epochs": request["epochs"], "train_samples": request["train_samples"]}
    targets = [
        Target(label, study_name(prefix, label), cfg, point)
        for label, cfg, point in _tuning_targets(plan, entries, request["seed"], overrides)
    ]
    log(
        f"tuning {len(targets)} studies, {request['trials']} trials each, same budget "
        f"({request['epochs']} data passes per trial) in {redact(url) if url else where}"
    )
    records = tune_all(targets, budget, tune_url, log=log, progress=progress)
    return _tuned(plan, records), {**request, "storage": where, "studies": records}


def _train(
    out: Path, run: PlannedRun | GridRun, data: DataBundle, progress: bool | None, test: bool
) -> RunResult:
    run_dir = out / "runs" / run.key
    return run_config(
        run.config, run_dir, resume=True, progress=progress, data=data, evaluate_test=test
    )


def finished_run(run_dir: Path) -> bool:
    """A result without a checkpoint to continue, and not an interruption (a run stopped
    before its first checkpoint leaves only an ``interrupted`` result: it trains again)."""
    path = run_dir / "result.json"
    if not path.exists() or (run_dir / "checkpoint.pt").exists():
        return False
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return True  # unreadable: reading it again for the run says what is wrong with it
    return not isinstance(result, dict) or result.get("status") != "interrupted"


def _run_local(
    out: Path,
    runs: list[PlannedRun] | list[GridRun],
    data: DataBundle,
    progress: bool | None,
    log: Any,
    test: bool = True,
    kind: str = " (learning-rate grid)",
) -> dict[str, RunResult]:
    """Every run in this process, in order, reusing finished ones. ``test=False``: scored on
    validation only, logged with ``kind``."""
    results = {}
    spent: list[float] = []  # seconds of each run trained here, for the estimate of what is left
    for i, run in enumerate(runs, 1):
        run_dir = out / "runs" / run.key
        done = finished_run(run_dir)
        tag = "" if test else f"{kind}, validation only"
        log(
            f"[{i}/{len(runs)}] {run.label} on {run.config.model}, seed {run.config.seed}{tag}: "
            + ("reused" if done else "training")
        )
        started = time.monotonic()
        result = _train(out, run, data, progress, test)
        results[run.key] = result
        if not done:
            spent.append(time.monotonic() - started)
            acc = result.metrics.get("test_accuracy" if test else "val_accuracy")
            what = "test" if test else "validation"
            line = f"        {result.status}" + (
                f", {what} accuracy {100 * acc:.2f}%" if acc else ""
            )
            log(f"{line} in {spent[-1]:.0f} s{_left(spent, len(runs) - i)}")
    return results


def _left(spent: list[float], runs_left: int) -> str:
    """'; about 3 min left (2 runs)': the mean time of the runs so far, times those left."""
    if not runs_left:
        return ""
    seconds = sum(spent) / len(spent) * runs_left
    when = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return (
        f"; about {when} left ({runs_left} run{'s' if runs_left > 1 else ''}, at the mean so far)"
    )
