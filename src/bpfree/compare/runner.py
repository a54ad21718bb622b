"""``bpfree compare``: run the plan, reusing finished runs, then write the report."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpfree.compare.plan import (
    BASELINE,
    Entry,
    PlannedRun,
    build_plan,
    parse_entries,
    plan_digest,
)
from bpfree.config import TrainConfig
from bpfree.data import load_dataset
from bpfree.engine import RunResult, Trainer
from bpfree.engine.environment import resolve_device
from bpfree.engine.io import read_json, write_json
from bpfree.errors import ConfigError
from bpfree.rules import parse_value

MANIFEST = "compare.json"


@dataclass
class Comparison:
    out: Path
    entries: list[Entry]
    plan: list[PlannedRun]
    results: dict[str, RunResult]


def split_sets(
    sets: list[str], labels: list[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``--set`` items: ``key=value`` for trainer settings, ``rule.key=value`` for a rule's
    hyperparameters (``bp.key=value`` for the backprop twins)."""
    trainer_keys = set(TrainConfig.field_names()) - {"rule", "model", "dataset", "hparams", "seed"}
    base: dict[str, Any] = {}
    scoped: dict[str, dict[str, Any]] = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        if key in trainer_keys:
            base[key] = parse_value(raw)
        elif "." in key:
            scope, name = key.rsplit(".", 1)
            scoped.setdefault(scope, {})[name] = parse_value(raw)
        else:
            raise ConfigError(
                f"--set {key}: in a comparison, rule settings name their rule "
                f"(e.g. --set mf.{key}={raw}); trainer settings: {', '.join(sorted(trainer_keys))}"
            )
    for scope in scoped:
        if (
            scope != BASELINE
            and scope not in labels
            and scope not in {label.split(":")[0] for label in labels}
        ):
            raise ConfigError(f"--set {scope}.*: {scope!r} is not among the compared rules")
    return base, scoped


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
) -> Comparison:
    """Train each rule on its native network and backprop on the same network, then report.

    Interrupted and rerun with the same options, it reuses finished runs and resumes the
    interrupted one, so every run is done exactly once.
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
    manifest = {
        "digest": plan_digest(plan),
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
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, manifest)
    first = plan[0].config
    data = load_dataset(
        dataset,
        data_dir=first.data_dir,
        val_fraction=first.val_fraction,
        data_seed=first.data_seed,
        train_samples=first.train_samples,
        device=resolve_device(first.device),
    )
    results: dict[str, RunResult] = {}
    for i, run in enumerate(plan, 1):
        run_dir = out / "runs" / run.key
        done = (run_dir / "result.json").exists() and not (run_dir / "checkpoint.pt").exists()
        verb = "reused" if done else "training"
        log(f"[{i}/{len(plan)}] {run.label} on {run.config.model}, seed {run.config.seed}: {verb}")
        result = Trainer(run.config, run_dir, resume=True, progress=progress, data=data).run()
        results[run.key] = result
        if not done:
            acc = result.metrics.get("test_accuracy")
            log(f"        {result.status}" + (f", test accuracy {100 * acc:.2f}%" if acc else ""))
    comparison = Comparison(out, entries, plan, results)
    if report:
        from bpfree.report import write_report

        write_report(out)
    return comparison
