"""Create or join a study: its budget and base settings are stored once, and every worker
that joins uses them (a joiner's flags may only repeat them).

A study is created with ``n_trials`` *tickets* (WAITING trials with a ``slot`` number) that the
workers claim (see :mod:`bpfree.sweeps.worker`); its user attributes hold the base
:class:`~bpfree.config.TrainConfig`, the :class:`~bpfree.sweeps.budget.Budget`, the sampler and
pruner in full, the search space and the rule's version. The study is readable by any Optuna
tool (``optuna-dashboard``, ``optuna trials``).
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from bpfree.config import TrainConfig
from bpfree.errors import BpfreeError, ConfigError, shorten
from bpfree.rules import RULES
from bpfree.sweeps.budget import Budget, base_point, search_space
from bpfree.sweeps.storage import (
    import_optuna,
    open_storage,
    redact,
    resolve_url,
    sqlite_missing,
)
from bpfree.version import __version__

SCHEMA = 1
READY_TIMEOUT_S = 30.0  # a joining worker waits this long for the creator to finish set-up
LOCAL_ONLY = ("data_dir",)  # where the data lives on this machine: not part of the experiment


class SweepError(BpfreeError):
    """A study that cannot go on (too many failures, not a bpfree study, ...)."""


@dataclass
class SweepSpec:
    """What a study is: its name, where it lives, and the settings every worker uses."""

    name: str
    storage: str  # resolved URL (may hold a password: never print it unredacted)
    base: TrainConfig
    budget: Budget
    space: dict[str, Any] = field(default_factory=dict)

    @property
    def direction(self) -> str:
        return "maximize" if self.base.monitor == "val_accuracy" else "minimize"


def quiet_optuna() -> Any:
    optuna = import_optuna()
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(requested))
    return [
        f"{k}={stored.get(k)!r} (asked {requested.get(k)!r})"
        for k in keys
        if k not in LOCAL_ONLY and stored.get(k) != requested.get(k)
    ]


def _check_tuned_not_fixed(base: TrainConfig, space: dict[str, Any]) -> None:
    defaults = RULES.get(base.rule).Hparams().to_dict()
    fixed = sorted(k for k in space if base.hparams.get(k) != defaults.get(k))
    if fixed:
        raise ConfigError(
            f"{', '.join(fixed)} {'is' if len(fixed) == 1 else 'are'} tuned by the sweep; "
            "remove the fixed value (--set) or the sweep would silently override it"
        )


def wait_ready(study: Any, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        attrs = study.user_attrs
        if attrs.get("ready"):
            return attrs
        if time.monotonic() > deadline:
            raise SweepError(
                f"study {name!r} exists but is not a finished bpfree sweep (created by other "
                "tools, or its creator died during set-up); choose another --study"
            )
        time.sleep(0.2)


MAX_STUDY_NAME = 512  # Optuna's column width in its RDB storages


def find_study(optuna: Any, name: str, storage: Any) -> Any | None:
    if not name.strip() or len(name) > MAX_STUDY_NAME:
        raise ConfigError(
            f"study name {shorten(name)} must be 1 to {MAX_STUDY_NAME} characters, not blank"
        )
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _spec_from_attrs(name: str, url: str, attrs: dict[str, Any]) -> SweepSpec:
    return SweepSpec(
        name,
        url,
        TrainConfig.build(attrs["base_config"]),
        # a study stored before ``defaults_first`` existed drew its first trial like the rest
        Budget.from_dict({"defaults_first": False, **attrs["budget"]}),
        attrs.get("search_space", {}),
    )


def create_or_join(
    study: str,
    storage: str | None = None,
    *,
    base: TrainConfig | dict[str, Any] | None = None,
    budget: Budget | dict[str, Any] | None = None,
    first: dict[str, Any] | None = None,
) -> SweepSpec:
    """Create study ``study`` with these settings, or check them against the stored ones.

    With the budget's ``defaults_first`` a new study's trial 0 runs ``first`` (default: the base
    settings' values of the tuned names, projected onto the search space).

    ``base`` and ``budget`` may be partial mappings (only what the user asked for): against an
    existing study they must agree with what is stored (equal budgets: a joining worker cannot
    change them); for a new study the rest takes the defaults.
    """
    optuna = quiet_optuna()
    url = resolve_url(storage)
    base_req = base.to_dict() if isinstance(base, TrainConfig) else dict(base or {})
    budget_req = budget.to_dict() if isinstance(budget, Budget) else dict(budget or {})
    creatable = {"rule", "dataset"} <= {k for k, v in base_req.items() if v}
    missing = ConfigError(
        f"study {shorten(study)} does not exist in {redact(url)}; create it with --rule, "
        "--dataset and --trials (and --model for another than the rule's native one)"
    )
    if sqlite_missing(url) and not creatable:
        raise missing  # and leave no new, empty database behind
    raw = open_storage(url)
    existing = find_study(optuna, study, raw)
    if existing is None:
        if not creatable:
            raise missing
        config = TrainConfig.build(base_req)
        plan = Budget.from_dict(budget_req)
        space = search_space(config.rule)
        _check_tuned_not_fixed(config, space)
        spec = SweepSpec(study, url, config, plan, space)
        try:
            created = optuna.create_study(study_name=study, storage=raw, direction=spec.direction)
        except optuna.exceptions.DuplicatedStudyError:
            existing = find_study(optuna, study, raw)  # another process created it just now
        else:
            attrs = {
                "bpfree": {
                    "version": __version__,
                    "schema": SCHEMA,
                    "kind": "sweep",
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "created_by": worker_id(),
                },
                "base_config": config.to_dict(),
                "rule_version": RULES.get(config.rule).info.rule_version,
                "budget": plan.to_dict(),
                "sampler_pruner": plan.describe(),
                "search_space": space,
                "objective": f"{config.monitor} at the best epoch (validation split only)",
            }
            for key, value in attrs.items():
                created.set_user_attr(key, value)
            if not plan.defaults_first:
                first = {}
            elif first is None:
                first = base_point(config, space)
            if first:
                created.set_user_attr("first_trial", first)
            for slot in range(plan.n_trials):  # the tickets: see the module docstring
                created.enqueue_trial(first if slot == 0 else {}, user_attrs={"slot": slot})
            created.set_user_attr("ready", True)  # last: joiners wait for it
            return spec
    assert existing is not None
    attrs = wait_ready(existing, study)
    spec = _spec_from_attrs(study, url, attrs)
    here = RULES.get(spec.base.rule).info.rule_version
    if attrs.get("rule_version", here) != here:
        raise ConfigError(
            f"study {study!r} tunes version {attrs['rule_version']} of rule {spec.base.rule!r}; "
            f"this bpfree has version {here}: run every worker on the same bpfree"
        )
    stored_base, stored_budget = spec.base.to_dict(), spec.budget.to_dict()
    hparams = {**stored_base["hparams"], **(base_req.get("hparams") or {})}
    wanted_base = TrainConfig.build({**stored_base, **base_req, "hparams": hparams}).to_dict()
    wanted_budget = Budget.from_dict({**stored_budget, **budget_req}).to_dict()
    diff = _differences(stored_base, wanted_base) + _differences(stored_budget, wanted_budget)
    if diff:
        raise ConfigError(
            f"study {study!r} was created with other settings: {'; '.join(diff)}. Every worker "
            "uses the stored budget and settings; leave those flags out or choose another --study"
        )
    if base_req.get("data_dir"):
        spec.base = spec.base.replace(data_dir=base_req["data_dir"])
    return spec


def load_spec(study: str, storage: str | None = None) -> SweepSpec:
    """The stored settings of an existing study."""
    return create_or_join(study, storage)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
