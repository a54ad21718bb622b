"""The tuning budget: stored with the study, so every worker and every rule tunes under it.

Equal budgets by construction: a study is created with one :class:`Budget` and one base
:class:`~bpfree.config.TrainConfig` (epoch cap, patience, training subset, run seed); both are
written into the study's user attributes, and a worker that joins reads them back instead of
taking its own. ``bpfree compare`` tunes a rule and its backprop twin with one Budget.

What counts toward ``n_trials``: *finished* trials, i.e. COMPLETE plus PRUNED (Optuna's own
convention, e.g. ``MaxTrialsCallback``): a pruned trial is a configuration the sampler evaluated
and learned from. FAIL trials (a killed worker, a diverged or crashed run) do not count: a killed
trial is re-queued with the same settings (up to ``max_retry`` times), a diverged one is replaced
by a fresh sample, and the study gives up after ``max_failed_trials`` failures.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from bpfree.engine.seeding import derive_seed
from bpfree.errors import ConfigError, suggest
from bpfree.rules import RULES
from bpfree.settings import coerce

if TYPE_CHECKING:
    from bpfree.config import TrainConfig


@dataclass(frozen=True)
class Budget:
    n_trials: int  # finished (COMPLETE + PRUNED) trials the study stops at, exactly
    sampler_seed: int = 0  # TPE's own seed, independent of the run seed
    startup_trials: int = 10  # TPE samples at random before modelling (Optuna's default)
    pruner: Literal["median", "none"] = "median"
    pruner_startup_trials: int = 5  # no pruning before this many finished trials (Optuna default)
    pruner_warmup_epochs: int = 2  # earliest epoch a trial can be pruned at: one noisy epoch is
    # not enough evidence, and with short epoch caps (5) a later warm-up would never prune
    max_failed_trials: int | None = None  # give up after this many FAIL trials (None: n_trials)
    max_retry: int = 2  # a trial whose worker died is re-run with the same settings this often
    heartbeat_interval_s: int = 15  # a running trial proves it is alive this often
    grace_period_s: int = 60  # silent this long: its worker is dead, the trial is FAIL
    # trial 0 runs the base settings (the rule's defaults, or its matched twin's), projected
    # onto the search space, so tuning can never end below them on validation
    defaults_first: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.n_trials >= 1, f"trials must be >= 1, got {self.n_trials}"),
            (self.sampler_seed >= 0, f"sampler_seed must be >= 0, got {self.sampler_seed}"),
            (self.startup_trials >= 0, "startup_trials must be >= 0"),
            (self.pruner_startup_trials >= 0, "pruner_startup_trials must be >= 0"),
            (self.pruner_warmup_epochs >= 0, "pruner_warmup_epochs must be >= 0"),
            (self.max_retry >= 0, f"max_retry must be >= 0, got {self.max_retry}"),
            (self.heartbeat_interval_s >= 1, "heartbeat_interval_s must be >= 1"),
            (
                self.grace_period_s > self.heartbeat_interval_s,
                f"grace_period_s ({self.grace_period_s}) must exceed heartbeat_interval_s "
                f"({self.heartbeat_interval_s}), or live trials would be failed",
            ),
            (
                self.max_failed_trials is None or self.max_failed_trials >= 0,
                "max_failed_trials must be >= 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def failure_cap(self) -> int:
        return self.n_trials if self.max_failed_trials is None else self.max_failed_trials

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Budget:
        names = [f.name for f in dataclasses.fields(cls)]
        hints = typing.get_type_hints(cls)
        if "n_trials" not in values or values["n_trials"] is None:
            raise ConfigError("a new sweep needs its number of trials (--trials N)")
        kwargs = {}
        for key, value in values.items():
            if key not in names:
                raise ConfigError(f"unknown budget setting {key!r}{suggest(key, names)}")
            kwargs[key] = coerce(key, value, hints[key])
        return cls(**kwargs)

    def sampler(self, trial_number: int) -> Any:
        """The TPE sampler for one trial, seeded from (sampler_seed, trial number).

        One seed per trial, not per process: workers that sample at the same moment would
        otherwise draw identical random start-up settings, and the settings a trial gets do not
        depend on which machine happened to run it.
        """
        import optuna

        return optuna.samplers.TPESampler(
            seed=derive_seed(self.sampler_seed, f"trial{trial_number}") % 2**32,
            n_startup_trials=self.startup_trials,
            constant_liar=True,  # running trials count as bad: parallel workers spread out
        )

    def make_pruner(self) -> Any:
        import optuna

        if self.pruner == "none":
            return optuna.pruners.NopPruner()
        return optuna.pruners.MedianPruner(
            n_startup_trials=self.pruner_startup_trials, n_warmup_steps=self.pruner_warmup_epochs
        )

    def describe(self) -> dict[str, Any]:
        """The sampler and pruner in full, for the record (what Optuna ran, not just our names)."""
        first = {"first_trial": "base settings"} if self.defaults_first else {}
        return {
            **first,
            "sampler": {
                "name": "TPESampler",
                "seed": self.sampler_seed,
                "seed_per_trial": "derive_seed(seed, 'trial<number>')",
                "n_startup_trials": self.startup_trials,
                "constant_liar": True,
            },
            "pruner": (
                {"name": "NopPruner"}
                if self.pruner == "none"
                else {
                    "name": "MedianPruner",
                    "n_startup_trials": self.pruner_startup_trials,
                    "n_warmup_steps": self.pruner_warmup_epochs,
                    "step": "epoch (1-based, across phases)",
                }
            ),
        }


class _SpaceRecorder:
    """A stand-in trial that records what ``Hparams.suggest`` asks for.

    Returns each range's low end (or first choice), so conditional spaces are recorded along
    their first branch only.
    """

    def __init__(self) -> None:
        self.space: dict[str, dict[str, Any]] = {}

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        self.space[name] = {"type": "float", "low": low, "high": high, "log": log, "step": step}
        return low

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        self.space[name] = {"type": "int", "low": low, "high": high, "log": log, "step": step}
        return low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.space[name] = {"type": "categorical", "choices": list(choices)}
        return next(iter(choices))


def search_space(rule: str) -> dict[str, dict[str, Any]]:
    """The rule's search space as ``{name: {type, low, high, log | choices}}``."""
    hp_cls = RULES.get(rule).Hparams
    recorder = _SpaceRecorder()
    try:
        hp_cls.suggest(recorder)
    except NotImplementedError as exc:
        raise ConfigError(f"rule {rule!r} defines no search space (Hparams.suggest)") from exc
    stray = sorted(set(recorder.space) - set(hp_cls.field_names()))
    if stray:
        raise ConfigError(
            f"rule {rule!r}: search-space names {stray} are not hyperparameters; "
            "suggest() must name each parameter after the field it sets"
        )
    return recorder.space


def base_point(config: TrainConfig, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The base settings' value of every tuned name, projected onto ``space``: a study's first
    trial under ``defaults_first``.

    A value outside its range takes the nearest end (weight decay 0 on a log range from 1e-6
    becomes 1e-6), a numeric value not among a categorical's choices the nearest choice, so the
    point is one the space holds and the sampler's record stays valid.
    """
    values = RULES.get(config.rule).Hparams.from_dict(config.hparams, config.rule).to_dict()
    point: dict[str, Any] = {}
    for name, dist in space.items():
        value = values.get(name)
        if value is None or isinstance(value, bool):
            continue
        if dist["type"] == "categorical":
            choices = dist["choices"]
            if value in choices:
                point[name] = value
            elif isinstance(value, int | float):
                numeric = [c for c in choices if isinstance(c, int | float)]
                if numeric:
                    point[name] = min(numeric, key=lambda c: abs(c - value))
            continue
        low, high, step = dist["low"], dist["high"], dist.get("step")
        v = min(max(value, low), high)
        if step:
            v = low + round((v - low) / step) * step
            v = min(v, high)
        point[name] = int(v) if dist["type"] == "int" else float(v)
    return point
