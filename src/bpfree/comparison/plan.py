"""What a comparison trains: each rule on its native network, and backprop on the same network.

The plan is built once from the user's request and stored as ``compare.json``. Everything the
protocol (shared/reference/protocol.md) asks to be equal is equal by construction: a rule's run
and its backprop twin are made from one base :class:`TrainConfig` that differs only in ``rule``
and ``hparams``, so split, data seed, epoch cap, stopping rule, monitor, training subset and run
seed are the same objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from bpfree.config import TrainConfig
from bpfree.data import DATASETS
from bpfree.errors import ConfigError
from bpfree.rules import RULES, baseline_rule, parse_value

BASELINE = baseline_rule()  # the backprop twin of every rule


def native_model(rule: str, dataset: str) -> str:
    """The network rule ``rule`` declares as native for the kind of ``dataset``."""
    return RULES.get(rule).info.native_model(DATASETS.get(dataset).kind)


@dataclass(frozen=True)
class Entry:
    """One rule variant of a comparison: ``cafo:blocks=dfa`` is rule cafo with blocks=dfa."""

    label: str
    rule: str
    model: str
    hparams: dict[str, Any]


@dataclass(frozen=True)
class PlannedRun:
    key: str  # directory name under <out>/runs
    label: str  # the entry label, or "bp@<model>" for a twin
    config: TrainConfig

    @property
    def is_baseline(self) -> bool:
        return self.config.rule == BASELINE and self.label.startswith(BASELINE + "@")


def parse_entries(
    rules: str,
    dataset: str,
    models: dict[str, str] | None = None,
    scoped: dict[str, dict[str, Any]] | None = None,
) -> list[Entry]:
    """Parse ``mf,ff,cafo,cafo:blocks=dfa`` into entries (label, rule, model, hparams)."""
    models, scoped = models or {}, scoped or {}
    entries: list[Entry] = []
    for raw in (part.strip() for part in rules.split(",")):
        if not raw:
            continue
        name, *settings = raw.split(":")
        RULES.get(name)  # unknown rule -> ConfigError with suggestions
        if name == BASELINE and not settings:
            raise ConfigError(
                f"{BASELINE} is every rule's twin already; list the rules to compare with it"
            )
        hp: dict[str, Any] = dict(scoped.get(name, {}))
        for item in settings:
            if "=" not in item:
                raise ConfigError(f"rule variant {raw!r}: expected rule:key=value, got {item!r}")
            k, v = item.split("=", 1)
            hp[k] = parse_value(v)
        model = models.get(raw, models.get(name)) or native_model(name, dataset)
        if any(e.label == raw for e in entries):
            raise ConfigError(f"rule {raw!r} is listed twice")
        entries.append(Entry(raw, name, model, hp))
    if not entries:
        raise ConfigError("no rules to compare; e.g. --rules mf,ff,cafo")
    return entries


def _key(label: str, model: str, seed: int) -> str:
    safe = label.replace(":", "_").replace("=", "-").replace("@", "_at_")
    return f"{safe}--{model}--s{seed}"


def build_plan(
    entries: list[Entry],
    dataset: str,
    seeds: list[int],
    base: dict[str, Any],
    baseline_hparams: dict[str, Any] | None = None,
) -> list[PlannedRun]:
    """The runs: every entry x seed, plus one backprop twin per (model, seed), shared."""
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {seeds}")
    DATASETS.get(dataset)
    runs: dict[str, PlannedRun] = {}
    for entry in entries:
        for seed in seeds:
            common = {**base, "dataset": dataset, "model": entry.model, "seed": seed}
            cfg = TrainConfig.build({**common, "rule": entry.rule, "hparams": entry.hparams})
            twin = TrainConfig.build(
                {**common, "rule": BASELINE, "hparams": dict(baseline_hparams or {})}
            )
            k = _key(entry.label, entry.model, seed)
            runs[k] = PlannedRun(k, entry.label, cfg)
            tk = _key(f"{BASELINE}@{entry.model}", entry.model, seed)
            runs.setdefault(tk, PlannedRun(tk, f"{BASELINE}@{entry.model}", twin))
    return list(runs.values())


def twin_label(entry: Entry) -> str:
    return f"{BASELINE}@{entry.model}"


def protocol_fields(config: TrainConfig) -> dict[str, Any]:
    """The settings a rule and its twin must share (all but the rule and its hyperparameters)."""
    d = dataclasses.asdict(config)
    d.pop("rule")
    d.pop("hparams")
    return d


def plan_digest(plan: list[PlannedRun]) -> str:
    blob = json.dumps([[r.key, r.config.to_dict()] for r in plan], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
