"""Learning rules. Adding a rule is one file in this package with ``@register_rule`` on its class:
every module here is imported (and so registered) when the package is, in name order.

See ``docs/adding-a-rule.md`` for the checklist and a worked example.
"""

from __future__ import annotations

import importlib
import pkgutil

from bpfree.errors import ConfigError
from bpfree.rules.base import (
    RULES,
    Batch,
    Phase,
    Rule,
    RuleInfo,
    baseline_rule,
    register_rule,
)
from bpfree.rules.hparams import Hparams
from bpfree.settings import parse_value

_NOT_RULES = {"base", "hparams", "toolkit"}  # the contract and the toolkit, not rules


def _discover() -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name not in _NOT_RULES and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_discover()


def create_rule(name: str, hparams: dict[str, object] | Hparams | None = None) -> Rule:
    """Instantiate rule ``name`` with hyperparameter overrides (unknown keys are errors)."""
    cls = RULES.get(name)
    if isinstance(hparams, Hparams):
        if not isinstance(hparams, cls.Hparams):
            raise ConfigError(f"hyperparameters {type(hparams).__name__} do not belong to {name!r}")
        hparams.validate()
        return cls(hparams)
    return cls(cls.Hparams.from_dict(dict(hparams or {}), rule=name))


__all__ = [
    "RULES",
    "Batch",
    "Hparams",
    "Phase",
    "Rule",
    "RuleInfo",
    "baseline_rule",
    "create_rule",
    "parse_value",
    "register_rule",
]
