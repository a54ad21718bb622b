"""Every registered rule (and the main options of each) passes the conformance suite.

A new rule is picked up automatically from the registry; its smallest native model is used
(``mlp_2x32`` for MLP rules, ``cnn_3block`` on 8x8 digits for CNN rules).
"""

from __future__ import annotations

import pytest

from bpfree.rules import RULES
from bpfree.testing.conformance import CHECKS, RuleCase

NATIVE = {"mlp": "mlp_2x32", "cnn": "cnn_3block"}

# Options whose code paths differ enough to need their own run of the suite.
VARIANTS: dict[str, list[dict[str, object]]] = {
    "mf": [{"schedule": "sequential"}, {"predict_from": "sum"}],
    "ff": [
        {"predict_mode": "classifier"},
        {"schedule": "layerwise", "predict_mode": "classifier"},
        {"peer_norm": 0.03},
    ],
    "cafo": [
        {"blocks": "dfa", "dfa_epochs": 2},
        {"predictor_loss": "mse"},
        {"predictor_loss": "sl"},
    ],
    "bp": [{"__model__": "cnn_3block"}],
}


def _cases() -> list[RuleCase]:
    cases = []
    for name in RULES.names():
        family = RULES.get(name).info.families[0]
        cases.append(RuleCase(name, NATIVE[family]))
        for hp in VARIANTS.get(name, []):
            hp = dict(hp)
            model = str(hp.pop("__model__", NATIVE[family]))
            cases.append(RuleCase(name, model, hp))
    return cases


CASES = _cases()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conformance(case: RuleCase, check) -> None:
    check(case)


def test_every_rule_is_covered() -> None:
    assert {c.rule for c in CASES} == set(RULES.names())
