"""What a comparison trains: each rule on its native network, and backprop on the same network.

The plan is built once from the user's request and stored as ``compare.json``. Everything the
protocol (shared/reference/protocol.md) asks to be equal is equal by construction: a rule's run
and its backprop twin are made from one base :class:`TrainConfig` that differs only in ``rule``
and ``hparams``, so split, data seed, budget (total data passes), stopping rule, monitor,
training subset and run seed are the same objects.

Twins (protocol point 4): ``matched`` (the default) gives the twin the rule's optimizer
settings, the fields of :data:`~bpfree.rules.toolkit.OPTIMIZER_FIELDS` (optimizer, lr, weight
decay, momentum, batch size, lr schedule), so the two differ only in the gradient they follow;
``own`` gives backprop its own defaults. Entries whose twins would be identical share one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from bpfree.config import TRAINER_KEYS, TrainConfig, parse_sets
from bpfree.data import DATASETS
from bpfree.engine.build import phase_plan
from bpfree.errors import ConfigError, split_commas, suggest
from bpfree.models import MODELS
from bpfree.rules import RULES, baseline_rule, parse_value
from bpfree.rules.toolkit import OPTIMIZER_FIELDS, OPTIONAL_OPTIMIZER_FIELDS, OptimizerSettings

BASELINE = baseline_rule()  # the backprop twin of every rule
TWIN_MODES = ("matched", "own")


def native_model(rule: str, dataset: str, hparams: dict[str, Any] | None = None) -> str:
    """The network rule ``rule`` declares as native for the kind of ``dataset`` (and its
    settings, for a rule whose variants have networks of their own)."""
    return RULES.get(rule).info.native_model(DATASETS.get(dataset).kind, hparams)


@dataclass(frozen=True)
class Entry:
    """One rule variant of a comparison: ``cafo:blocks=dfa`` is rule cafo with blocks=dfa."""

    label: str
    rule: str
    model: str
    hparams: dict[str, Any]
    twin: str = ""  # the label of its backprop twin (set by assign_twins)
    twin_hparams: dict[str, Any] = dataclasses.field(default_factory=dict)


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
    listed = split_commas(rules, "--rules")
    for key, model in models.items():  # --model RULE=MODEL names a compared rule and a model
        if key not in listed and key not in {r.split(":")[0] for r in listed}:
            raise ConfigError(
                f"--model {key}={model}: {key!r} is not among the compared rules "
                f"({', '.join(listed)})" + suggest(key, listed)
            )
        if not model:
            raise ConfigError(f"--model {key}=: no model given (e.g. {key}=mlp_2x1000)")
        MODELS.get(model)  # unknown model -> ConfigError with suggestions
    entries: list[Entry] = []
    for raw in listed:
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
        model = models.get(raw, models.get(name)) or native_model(name, dataset, hp)
        if any(e.label == raw for e in entries):
            raise ConfigError(f"rule {raw!r} is listed twice")
        entries.append(Entry(raw, name, model, hp))
    if not entries:
        raise ConfigError("no rules to compare; e.g. --rules mf,ff,cafo")
    return entries


OPTIMIZER_DEFAULTS = OptimizerSettings().to_dict()


def matched_settings(entry: Entry) -> dict[str, Any]:
    """The optimizer settings of the entry's rule (its defaults with the entry's overrides)."""
    hp = RULES.get(entry.rule).Hparams.from_dict(dict(entry.hparams), rule=entry.rule).to_dict()
    return {
        k: hp[k]
        for k in OPTIMIZER_FIELDS
        if k in hp and (k not in OPTIONAL_OPTIMIZER_FIELDS or hp[k] != OPTIMIZER_DEFAULTS[k])
    }


def assign_twins(
    entries: list[Entry], mode: str = "matched", overrides: dict[str, Any] | None = None
) -> list[Entry]:
    """Each entry with its twin's label and hyperparameters (see the module docstring).

    ``overrides`` (``--set bp.key=value``) apply to every twin; with ``matched`` they may not
    touch an optimizer setting (that would unmatch the pair).
    """
    if mode not in TWIN_MODES:
        raise ConfigError(f"--twin must be one of {', '.join(TWIN_MODES)}, got {mode!r}")
    overrides = dict(overrides or {})
    clash = sorted(set(overrides) & set(OPTIMIZER_FIELDS))
    if mode == "matched" and clash:
        raise ConfigError(
            f"--set {BASELINE}.{clash[0]}: with --twin matched the twins take each rule's "
            f"optimizer settings ({', '.join(OPTIMIZER_FIELDS)}); use --twin own to set them"
        )
    settings = [
        {**(matched_settings(e) if mode == "matched" else {}), **overrides} for e in entries
    ]
    distinct: dict[str, list[dict[str, Any]]] = {}
    for e, hp in zip(entries, settings, strict=True):
        if hp not in distinct.setdefault(e.model, []):
            distinct[e.model].append(hp)
    out, named = [], {}
    for e, hp in zip(entries, settings, strict=True):
        key = json.dumps([e.model, hp], sort_keys=True)
        if key not in named:
            shared = len(distinct[e.model]) == 1
            named[key] = f"{BASELINE}@{e.model}" + ("" if shared else f"~{e.label}")
        out.append(dataclasses.replace(e, twin=named[key], twin_hparams=hp))
    return out


def _key(label: str, model: str, seed: int) -> str:
    safe = label.replace(":", "_").replace("=", "-").replace("@", "_at_")
    return f"{safe}--{model}--s{seed}"


def build_plan(
    entries: list[Entry], dataset: str, seeds: list[int], base: dict[str, Any]
) -> list[PlannedRun]:
    """The runs: every entry x seed, plus its twin per seed (shared where identical).

    Entries without a twin yet get ``matched`` twins (:func:`assign_twins`)."""
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {seeds}")
    DATASETS.get(dataset)
    if any(not e.twin for e in entries):
        entries = assign_twins(entries)
    runs: dict[str, PlannedRun] = {}
    for entry in entries:
        for seed in seeds:
            common = {**base, "dataset": dataset, "model": entry.model, "seed": seed}
            cfg = TrainConfig.build({**common, "rule": entry.rule, "hparams": entry.hparams})
            twin = TrainConfig.build(
                {**common, "rule": BASELINE, "hparams": dict(entry.twin_hparams)}
            )
            if seed == seeds[0]:
                phase_plan(cfg)  # every entry's budget covers its phases, before any run
            k = _key(entry.label, entry.model, seed)
            runs[k] = PlannedRun(k, entry.label, cfg)
            tk = _key(entry.twin, entry.model, seed)
            runs.setdefault(tk, PlannedRun(tk, entry.twin, twin))
    return list(runs.values())


def protocol_fields(config: TrainConfig) -> dict[str, Any]:
    """The settings a rule and its twin must share (all but the rule and its hyperparameters)."""
    d = dataclasses.asdict(config)
    d.pop("rule")
    d.pop("hparams")
    return d


def plan_digest(plan: list[PlannedRun] | list[GridRun]) -> str:
    blob = json.dumps([[r.key, r.config.to_dict()] for r in plan], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    """``3`` -> [0, 1, 2]; ``"0,5,9"`` -> [0, 5, 9]; ranges ``"3-4"`` -> [3, 4] (``"2-2"``:
    seed 2 alone), also in a list (``"0,3-4"``); anything else is a ConfigError."""
    if isinstance(seeds, list):
        values = seeds
    else:
        text = str(seeds).strip()
        try:
            if "," in text or "-" in text.lstrip("-"):
                values = [v for item in split_commas(text, "--seeds") for v in _seed_range(item)]
            else:
                values = list(range(int(text)))
        except ConfigError:
            raise
        except ValueError:
            raise ConfigError(
                f"--seeds expects a count (3), a list of seeds (0,5,9) or a range (3-4), got "
                f"{text[:40]!r}"
            ) from None
        if not values:
            raise ConfigError(
                f"--seeds is a count of seeds, at least 1, got {text!r} (--seeds 1 runs seed 0 "
                "alone; a list such as 0,5,9 names the seeds)"
            )
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ConfigError(f"seeds must be integers >= 0, got {values}")
    if len(set(values)) != len(values):
        raise ConfigError(f"a seed is listed twice in {values}")
    return values


def _seed_range(item: str) -> list[int]:
    """``"5"`` -> [5]; ``"3-4"`` -> [3, 4]; a range that runs backwards is a ConfigError."""
    first, sep, last = item.partition("-")
    if not sep:
        return [int(item)]
    lo, hi = int(first), int(last)
    if hi < lo:
        raise ConfigError(f"--seeds range {item!r} runs backwards (write {hi}-{lo})")
    return list(range(lo, hi + 1))


@dataclass(frozen=True)
class GridRun:
    """A learning-rate sensitivity run: ``base`` (an entry or twin label) at step size ``lr``."""

    key: str
    label: str
    base: str
    lr: float
    config: TrainConfig


def lr_grid_plan(
    entries: list[Entry],
    dataset: str,
    seed: int,
    base: dict[str, Any],
    grid: list[float],
    mode: str,
    overrides: dict[str, Any] | None = None,
) -> list[GridRun]:
    """Every entry and its twin at each ``lr`` of ``grid``, on one seed (validation only).

    The twins follow the comparison's mode: matched twins take each lr with the rest of the
    rule's optimizer settings; ``own`` twins take the lr and keep backprop's other defaults."""
    if not grid or any(not (0 < lr < float("inf")) for lr in grid):
        raise ConfigError(f"--lr-grid expects positive learning rates, got {grid}")
    runs: dict[str, GridRun] = {}
    for lr in grid:
        tag = f"@lr={lr:g}"
        at = [dataclasses.replace(e, hparams={**e.hparams, "lr": lr}, twin="") for e in entries]
        for e, moved in zip(entries, assign_twins(at, mode, overrides), strict=True):
            common = {**base, "dataset": dataset, "model": e.model, "seed": seed}
            twin_hp = {**moved.twin_hparams, "lr": lr}
            for label, rule, hp in ((e.label, e.rule, moved.hparams), (e.twin, BASELINE, twin_hp)):
                key = _key(label + tag, e.model, seed)
                if key not in runs:
                    cfg = TrainConfig.build({**common, "rule": rule, "hparams": hp})
                    runs[key] = GridRun(key, label + tag, label, lr, cfg)
    return list(runs.values())


ONE_PROCESS = "--one-process"  # the key suffix of a parallel run's one-process reference


def one_process_plan(plan: list[PlannedRun], seed: int) -> list[PlannedRun]:
    """The reference for every parallel run (``stages`` or ``replicas`` > 1) on ``seed``: the
    same run in one process, so the report can state the speedup (validation only)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    single = {k: defaults[k] for k in ("stages", "replicas", "micro_batches", "pipeline_schedule")}
    parallel = [r for r in plan if max(r.config.stages, r.config.replicas) > 1]
    if not parallel:
        raise ConfigError(
            "--one-process-reference measures the speedup of parallel runs: add --stages K "
            "or --replicas K (K > 1)"
        )
    return [
        PlannedRun(r.key + ONE_PROCESS, r.label, r.config.replace(**single))
        for r in parallel
        if r.config.seed == seed
    ]
