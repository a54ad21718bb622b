"""``bpfree compare``: run the plan, reusing finished runs, then write the report.

With ``tune=N`` every rule variant and every backprop twin is first tuned with the same budget
(:mod:`bpfree.comparison.tune`); with ``storage=URL`` the tuning trials and the seeded runs are
shared by every process running the same comparison (:mod:`bpfree.comparison.queue`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfree.comparison.plan import (
    BASELINE,
    Entry,
    PlannedRun,
    build_plan,
    parse_entries,
    plan_digest,
)
from bpfree.comparison.queue import RunQueue
from bpfree.comparison.tune import Target, study_name, tune_all
from bpfree.config import TRAINER_KEYS, TrainConfig, parse_sets
from bpfree.engine import RunResult, Trainer, load_data
from bpfree.engine.io import read_json, write_json
from bpfree.errors import ConfigError
from bpfree.reporting import write_report
from bpfree.rules import RULES
from bpfree.sweeps.budget import Budget
from bpfree.sweeps.storage import redact, resolve_url

MANIFEST = "compare.json"
TUNING_DB = "tuning.db"  # --tune without --storage: the studies live inside <out>


@dataclass
class Comparison:
    out: Path
    entries: list[Entry]
    plan: list[PlannedRun]
    results: dict[str, RunResult]
    tuning: dict[str, Any] | None = field(default=None)  # compare.json's "tuning" record


def split_sets(
    sets: list[str], labels: list[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``--set`` items of a comparison (the grammar of :func:`bpfree.config.parse_sets`):
    ``key=value`` is a trainer setting, or a hyperparameter of every compared rule that has
    it; ``rule.key=value`` a hyperparameter of that rule's entries only (a single variant takes
    its own inline: ``cafo:blocks=dfa:ridge=3``), ``bp.key`` of the backprop twins. Returns
    (trainer settings, hyperparameters by rule)."""
    parsed = parse_sets(sets)
    if "seed" in parsed.trainer:
        raise ConfigError("--set seed: a comparison's seeds are given by --seeds")
    rules = {label.split(":")[0] for label in labels}
    for scope in parsed.scoped:
        if scope != BASELINE and scope not in rules:
            raise ConfigError(f"--set {scope}.*: {scope!r} is not among the compared rules")
    scoped = {scope: dict(items) for scope, items in parsed.scoped.items()}
    for key, value in parsed.rule.items():
        takers = [r for r in sorted(rules) if key in RULES.get(r).Hparams.field_names()]
        if not takers:
            raise ConfigError(
                f"--set {key}: no compared rule has a setting {key!r}, and it is no trainer "
                f"setting (those are: {', '.join(sorted(TRAINER_KEYS - {'seed'}))})"
            )
        for r in takers:
            scoped.setdefault(r, {}).setdefault(key, value)
    return parsed.trainer, scoped


def parse_seeds(seeds: int | str | list[int]) -> list[int]:
    """``3`` -> [0, 1, 2]; ``"0,5,9"`` -> [0, 5, 9]."""
    if isinstance(seeds, list):
        return seeds
    text = str(seeds)
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    n = int(text)
    if n < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n}")
    return list(range(n))


def _check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    path = out / MANIFEST
    if path.exists():
        old = read_json(path)
        if old.get("digest") != manifest["digest"]:
            raise ConfigError(
                f"{out} holds a different comparison (other rules, seeds or settings); "
                "rerun with the same options to continue it, or choose another --out"
            )
    write_json(path, manifest)


def _digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _tuning_targets(
    plan: list[PlannedRun], entries: list[Entry], seed: int, overrides: dict[str, Any]
) -> list[tuple[str, TrainConfig]]:
    """(label, base settings) of every study: each entry, then each distinct twin, on the
    comparison's first seed with the tuning epoch cap and training subset."""
    first = {r.label: r.config for r in plan if r.config.seed == seed}
    labels = [e.label for e in entries]
    labels += list(dict.fromkeys(f"{BASELINE}@{e.model}" for e in entries))
    return [(label, first[label].replace(**overrides)) for label in labels]


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
) -> Comparison:
    """Train each rule on its native network and backprop on the same network, then report.

    Interrupted and rerun with the same options, it reuses finished runs and resumes the
    interrupted one, so every run is done exactly once.

    ``tune=N``: first tune every rule variant and every backprop twin with N trials under one
    budget (``tune_epochs`` and ``tune_train_samples`` per trial, default the comparison's own;
    ``budget`` holds further :class:`~bpfree.sweeps.Budget` settings, e.g. ``sampler_seed``),
    then train the seeded runs with each study's best settings. The studies live in ``storage``,
    else in ``<out>/tuning.db``. ``storage=URL``: several processes running the same comparison
    share its tuning trials and seeded runs through that storage (``budget``'s heartbeat
    settings apply to both).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out)
    labels = [r.strip() for r in rules.split(",") if r.strip()]
    base, scoped = split_sets(list(sets or []), labels)
    for key, value in (
        ("epochs", epochs),
        ("train_samples", train_samples),
        ("data_dir", data_dir),
        ("device", device),
    ):
        if value is not None:
            base[key] = value
    entries = parse_entries(rules, dataset, models, scoped)
    seed_list = parse_seeds(seeds)
    plan = build_plan(entries, dataset, seed_list, base, scoped.get(BASELINE))
    plan_budget = Budget.from_dict({"n_trials": tune or 1, **(budget or {})})
    request: dict[str, Any] | None = None
    if tune is not None:
        first = plan[0].config
        request = {
            "trials": tune,
            "budget": plan_budget.to_dict(),
            "sampler_pruner": plan_budget.describe(),
            "epochs": tune_epochs if tune_epochs is not None else first.epochs,
            "train_samples": (
                tune_train_samples if tune_train_samples is not None else first.train_samples
            ),
            "seed": seed_list[0],
        }
    # The comparison's identity: its runs (without where data lives) and its tuning request.
    shared = [
        [r.key, {k: v for k, v in r.config.to_dict().items() if k != "data_dir"}] for r in plan
    ]
    prefix = "cmp-" + _digest(shared, request)
    manifest = {
        "digest": plan_digest(plan) if request is None else _digest(plan_digest(plan), request),
        "dataset": dataset,
        "seeds": seed_list,
        "entries": [
            {
                "label": e.label,
                "rule": e.rule,
                "model": e.model,
                "hparams": e.hparams,
                "twin": f"{BASELINE}@{e.model}",
            }
            for e in entries
        ],
        "runs": [{"key": r.key, "label": r.label, "config": r.config.to_dict()} for r in plan],
    }
    url = None
    if storage is not None:
        url = resolve_url(storage)
        manifest["shared"] = {"storage": redact(url), "runs_study": f"{prefix}-runs"}
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, manifest)
    tuning = None
    if request is not None:
        tune_url = url or resolve_url(str((out / TUNING_DB).resolve()))
        overrides = {"epochs": request["epochs"], "train_samples": request["train_samples"]}
        targets = [
            Target(label, study_name(prefix, label), cfg)
            for label, cfg in _tuning_targets(plan, entries, seed_list[0], overrides)
        ]
        log(
            f"tuning {len(targets)} studies, {tune} trials each, same budget "
            f"({request['epochs']} epochs per trial) in {redact(tune_url)}"
        )
        records = tune_all(targets, plan_budget, tune_url, log=log, progress=progress)
        tuning = {**request, "storage": redact(tune_url), "studies": records}
        plan = _tuned(plan, records)
        manifest["tuning"] = tuning
        manifest["runs"] = [
            {"key": r.key, "label": r.label, "config": r.config.to_dict()} for r in plan
        ]
        write_json(out / MANIFEST, manifest)
    first = plan[0].config
    data = load_data(first)

    def train(run: PlannedRun) -> RunResult:
        run_dir = out / "runs" / run.key
        return Trainer(run.config, run_dir, resume=True, progress=progress, data=data).run()

    if url is not None:
        queue = RunQueue(
            f"{prefix}-runs",
            url,
            plan,
            out,
            heartbeat_interval_s=plan_budget.heartbeat_interval_s,
            grace_period_s=plan_budget.grace_period_s,
            log=log,
        )
        results = queue.work(train)
    else:
        results = {}
        for i, run in enumerate(plan, 1):
            run_dir = out / "runs" / run.key
            done = (run_dir / "result.json").exists() and not (run_dir / "checkpoint.pt").exists()
            verb = "reused" if done else "training"
            log(
                f"[{i}/{len(plan)}] {run.label} on {run.config.model}, seed {run.config.seed}: "
                f"{verb}"
            )
            result = train(run)
            results[run.key] = result
            if not done:
                acc = result.metrics.get("test_accuracy")
                log(
                    f"        {result.status}"
                    + (f", test accuracy {100 * acc:.2f}%" if acc else "")
                )
    comparison = Comparison(out, entries, plan, results, tuning)
    if report:
        write_report(out)
    return comparison
