"""Rule registry. Adding a rule is one file plus one line here."""

from __future__ import annotations

from bpfree.errors import ConfigError
from bpfree.registry import Registry
from bpfree.rules.base import Batch, Hparams, Phase, Rule, RuleInfo, parse_value
from bpfree.rules.bp import Backprop
from bpfree.rules.cafo import CascadedForward
from bpfree.rules.dfa import DirectFeedbackAlignment
from bpfree.rules.forward_forward import ForwardForward
from bpfree.rules.mono_forward import MonoForward

RULES: Registry[type[Rule]] = Registry("rule")
for _rule in (Backprop, MonoForward, ForwardForward, CascadedForward, DirectFeedbackAlignment):
    RULES.register(_rule.info.name, _rule)


def create_rule(name: str, hparams: dict[str, object] | Hparams | None = None) -> Rule:
    """Instantiate rule ``name`` with hyperparameter overrides (unknown keys are errors)."""
    cls = RULES.get(name)
    if isinstance(hparams, Hparams):
        if not isinstance(hparams, cls.Hparams):
            raise ConfigError(f"hyperparameters {type(hparams).__name__} do not belong to {name!r}")
        hparams.validate()
        return cls(hparams)
    return cls(cls.Hparams.from_dict(dict(hparams or {}), rule=name))


__all__ = ["RULES", "Batch", "Hparams", "Phase", "Rule", "RuleInfo", "create_rule", "parse_value"]
