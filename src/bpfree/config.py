"""Run configuration: a frozen dataclass; TOML or keyword arguments in, JSON out.

Unknown keys are errors (a misspelled setting must never fall back to a default silently).
Rule hyperparameters live in ``hparams`` and are checked against the rule's own dataclass.
``model`` may be left out: the rule's native network for the dataset's kind is used.

One ``--set`` grammar for every command (:func:`parse_sets`): ``key=value`` is a trainer setting
when ``key`` names one, else a hyperparameter of the rule(s) being run; ``rule.key=value`` is a
hyperparameter of that rule only (``hparams.key=value`` is the same as ``key=value``).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bpfree.data import DATASETS
from bpfree.errors import ConfigError, shorten, suggest
from bpfree.meters.carbon import resolve_intensity
from bpfree.models import model_family
from bpfree.rules import RULES, create_rule
from bpfree.settings import coerce, parse_value

REQUIRED = ("rule", "dataset")


@dataclass(frozen=True)
class TrainConfig:
    rule: str
    dataset: str
    model: str | None = None  # None: the rule's native network for this dataset's kind
    seed: int = 0
    epochs: int = 30  # data passes in total per run, summed over the rule's phases
    budget_flops: float | None = None  # also stop when training FLOPs would pass this
    budget_seconds: float | None = None  # also stop when training wall time passes this
    divergence_factor: float = 100.0  # diverged: loss above this x the phase's first loss
    patience: int = 5  # epochs without improvement of `monitor` before stopping
    min_delta: float = 0.0  # smallest change of `monitor` that counts as improvement
    monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    val_fraction: float = 0.1
    data_seed: int = 0  # draws the validation split; independent of the run seed
    train_samples: int | None = None  # keep only the first N training examples
    eval_batch_size: int = 1000
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data_dir: str | None = None
    grid_intensity: float | None = None  # gCO2e/kWh for `carbon`; else `country`, else 475
    country: str | None = None  # ISO code looked up in bpfree.meters.carbon.COUNTRY_INTENSITY
    estimate_energy: bool = False  # also record a CodeCarbon estimate (labelled estimate:...)
    meters: bool = True  # False: wall time only (for measuring the meters' own overhead)
    # Fine-tuning and text (left out of to_dict at their defaults: OPTIONAL_FIELDS)
    init_from: str | None = None  # a finished run's directory: its body's weights to start from
    trainable: Literal["all", "head", "lora"] = "all"  # what trains: see RuleInfo.trainable
    lora_rank: int = 8  # LoRA's r and alpha (ZO-Bench's defaults), for trainable="lora"
    lora_alpha: int = 16
    k_shot: int | None = None  # keep K training examples per class, drawn from the run seed
    max_length: int = 128  # text: tokens per example after truncation
    # Parallel training (engine/parallel.py; left out of to_dict at their defaults)
    stages: int = 1  # pipeline stages, one process each (RuleInfo.pipeline)
    micro_batches: int = 4  # backprop pipeline: micro-batches per batch
    pipeline_schedule: Literal["gpipe", "1f1b"] = "gpipe"  # backprop pipeline's schedule
    replicas: int = 1  # data-parallel processes, each on a shard of every batch
    hparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        info = RULES.get(self.rule).info
        kind = DATASETS.get(self.dataset).kind
        if self.model is None:
            object.__setattr__(self, "model", info.native_model(kind, self.hparams))
        family = model_family(self.model)
        if family not in info.families:
            raise ConfigError(
                f"rule {self.rule!r} cannot train {self.model!r}; it trains "
                f"{' and '.join(info.families)} models (e.g. its native "
                f"{info.native_model(kind, self.hparams)})"
            )
        if (family == "text") != (kind == "text"):
            what = "a text model (minilm_l6, hf:DIR)" if kind == "text" else "an image model"
            raise ConfigError(
                f"dataset {self.dataset!r} is {'text' if kind == 'text' else 'images'}: it "
                f"needs {what}, not {self.model!r}"
            )
        if self.trainable not in info.trainable:
            raise ConfigError(
                f"rule {self.rule!r} cannot train with trainable={self.trainable!r}; it "
                f"offers: {', '.join(info.trainable)}"
            )
        if self.trainable == "lora" and family != "text":
            raise ConfigError("trainable='lora' applies to text models (minilm_l6, hf:DIR)")
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (self.min_delta >= 0, f"min_delta must be >= 0, got {self.min_delta}"),
            (
                self.budget_flops is None or 0 < self.budget_flops < math.inf,
                f"budget_flops must be a positive number, got {self.budget_flops}",
            ),
            (
                self.budget_seconds is None or 0 < self.budget_seconds < math.inf,
                f"budget_seconds must be a positive number, got {self.budget_seconds}",
            ),
            (
                1 < self.divergence_factor < math.inf,
                f"divergence_factor must be a number > 1, got {self.divergence_factor}",
            ),
            (0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
            (
                self.eval_batch_size >= 1,
                f"eval_batch_size must be >= 1, got {self.eval_batch_size}",
            ),
            (self.seed >= 0 and self.data_seed >= 0, "seed and data_seed must be >= 0"),
            (
                self.train_samples is None or self.train_samples >= 2,
                f"train_samples must be >= 2, got {self.train_samples}",
            ),
            (self.data_dir != "", "data_dir is empty; leave it out to search the usual places"),
            (self.k_shot is None or self.k_shot >= 1, f"k_shot must be >= 1, got {self.k_shot}"),
            (self.max_length >= 2, f"max_length must be >= 2, got {self.max_length}"),
            (
                self.lora_rank >= 1 and self.lora_alpha >= 1,
                f"lora_rank and lora_alpha must be >= 1, got {self.lora_rank}, {self.lora_alpha}",
            ),
            (
                self.stages >= 1 and self.replicas >= 1 and self.micro_batches >= 1,
                "stages, replicas and micro_batches must be >= 1, got "
                f"{self.stages}, {self.replicas}, {self.micro_batches}",
            ),
            (
                self.pipeline_schedule == "gpipe" or self.micro_batches >= self.stages,
                f"pipeline_schedule 1f1b needs micro_batches >= stages, got {self.micro_batches} "
                f"< {self.stages}",
            ),
            (
                self.stages == 1 or self.replicas == 1,
                "stages and replicas cannot both be > 1 (pipeline or data parallel, not both)",
            ),
            (
                self.budget_seconds is None or max(self.stages, self.replicas) == 1,
                "budget_seconds cannot stop parallel processes at the same step; use budget_flops",
            ),
            (
                self.stages == 1 or info.pipeline != "none",
                f"rule {self.rule!r} cannot be split into pipeline stages: {info.pipeline_note}",
            ),
            (
                self.stages == 1 or family in ("mlp", "cnn"),
                f"pipeline stages split mlp and cnn bodies, not {family} ({self.model})",
            ),
            (
                self.replicas == 1 or info.data_parallel,
                f"rule {self.rule!r} does not offer data-parallel training (its update does "
                "not go through an optimizer step on gradients that replicas can average)",
            ),
            (self.init_from != "", "init_from is empty; give a finished run's directory"),
            (
                not self.init_from or Path(self.init_from).expanduser().is_dir(),
                f"init_from {self.init_from}: no such run directory",
            ),
            (
                not self.data_dir or not Path(self.data_dir).expanduser().is_file(),
                f"data_dir {self.data_dir} is a file; give the folder that holds dataset files",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        resolve_intensity(self.grid_intensity, self.country)  # unknown country: error now
        # Resolve hyperparameters now so bad ones fail before any data is loaded.
        object.__setattr__(self, "hparams", create_rule(self.rule, self.hparams).hp.to_dict())

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping, coercing types and rejecting unknown keys."""
        names = cls.field_names()
        hints = typing.get_type_hints(cls)
        for key in REQUIRED:
            if key not in values or values[key] in (None, ""):
                raise ConfigError(f"missing required setting {key!r}")
        kwargs = {}
        for key, value in values.items():
            if key not in names:
                raise ConfigError(f"unknown setting {shorten(key)}{suggest(key, names)}")
            kwargs[key] = value if key == "hparams" else coerce(key, value, hints[key])
        if not isinstance(kwargs.get("hparams", {}), dict):
            raise ConfigError("hparams must be a table of rule settings")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Every setting, but the OPTIONAL_FIELDS left at their defaults (so the settings of
        runs made before those fields existed read the same)."""
        d = dataclasses.asdict(self)
        for key, default in OPTIONAL_FIELDS.items():
            if d[key] == default:
                del d[key]
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.build({**self.to_dict(), **changes})


OPTIONAL_FIELDS: dict[str, Any] = {
    "init_from": None,
    "trainable": "all",
    "lora_rank": 8,
    "lora_alpha": 16,
    "k_shot": None,
    "max_length": 128,
    "stages": 1,
    "micro_batches": 4,
    "pipeline_schedule": "gpipe",
    "replicas": 1,
}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a flat mapping for :meth:`TrainConfig.build`."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {p} does not exist") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    return data


@dataclass
class SetItems:
    """``--set`` items sorted by what they set (see the module docstring)."""

    trainer: dict[str, Any] = field(default_factory=dict)  # trainer settings
    rule: dict[str, Any] = field(default_factory=dict)  # hyperparameters of the rule(s) run
    scoped: dict[str, dict[str, Any]] = field(default_factory=dict)  # rule -> hyperparameters


TRAINER_KEYS = frozenset(TrainConfig.field_names()) - {"rule", "model", "dataset", "hparams"}


def parse_sets(items: list[str]) -> SetItems:
    """Sort ``--set key=value`` items into trainer settings, rule and scoped hyperparameters."""
    out = SetItems()
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {shorten(item)}")
        key, raw = (part.strip() for part in item.split("=", 1))
        if not key:
            raise ConfigError(f"--set expects key=value, got {shorten(item)}")
        value = parse_value(raw)
        if key.startswith("hparams."):
            out.rule[key.removeprefix("hparams.")] = value
        elif key in TRAINER_KEYS:
            out.trainer[key] = value
        elif "." in key:
            scope, name = key.rsplit(".", 1)
            out.scoped.setdefault(scope, {})[name] = value
        else:
            out.rule[key] = value
    return out


def apply_sets(values: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``--set`` items to the settings of a run of one rule (``train``, ``sweep``).

    ``rule.key=value`` must name the run's rule; unknown keys are caught when the config is
    built.
    """
    parsed = parse_sets(sets)
    values = {**values, **parsed.trainer}
    hparams = {**dict(values.get("hparams") or {}), **parsed.rule}
    rule = values.get("rule")
    for scope, items in parsed.scoped.items():
        if scope != rule:
            raise ConfigError(
                f"--set {scope}.{next(iter(items))}: {scope!r} is not the rule of this run "
                f"({rule!r}); write --set {next(iter(items))}=... or use {rule}.key"
            )
        hparams.update(items)
    values["hparams"] = hparams
    return values
