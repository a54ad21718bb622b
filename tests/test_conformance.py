"""Every registered rule (and the main options of each) passes the conformance suite.

A new rule is picked up automatically from the registry and runs on its own native network for
the 8x8 ``digits`` (an MLP shrunk to width 32, its depth kept, so the suite stays fast).
"""

from __future__ import annotations

import re

import pytest

from bpfree.data import DATASETS
from bpfree.rules import RULES
from bpfree.testing.conformance import CHECKS, RuleCase

KIND = DATASETS.get("digits").kind


def small_native(rule: str) -> str:
    """The rule's native network for digits; an MLP at width 32 (same depth)."""
    model = RULES.get(rule).info.native_model(KIND)
    mlp = re.fullmatch(r"mlp_(\d+)x\d+(.*)", model)
    return f"mlp_{mlp.group(1)}x32{mlp.group(2)}" if mlp else model


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
    "bp": [{"__model__": "cnn_3block"}, {"lr_cooldown": True}],
    "dfa": [{"pipeline_error": "stale"}],
    "fg": [{"tangents": 3}, {"tangents": 3, "combine": "project"}, {"__model__": "cnn_3block"}],
    "pepita": [{"last_error": "standard"}, {"__model__": "mlp_2x32"}],
    "foton": [{"__model__": "mlp_3x32"}],
    "tpsgd": [{"loss": "l1"}],
    "sign_symmetry": [{"variant": "brsf"}, {"variant": "frsf"}, {"__model__": "mlp_2x32"}],
    "mezo": [
        {"variant": "momentum"},
        {"variant": "adam"},
        {"variant": "sign"},
        {"variant": "conservative"},
        {"perturbation": "one_side", "q": 3},
        {"q": 2, "distribution": "rademacher", "weight_decay": 0.01},
    ],
    "noprop": [
        {"variant": "ct", "__model__": "noprop_ct"},
        {"variant": "fm", "__model__": "noprop_fm"},
        {
            "variant": "ct",
            "embedding": "learned",
            "inference_steps": 3,
            "__model__": "noprop_ct_w32_e16",
        },
        {"variant": "fm", "embedding": "learned", "__model__": "noprop_fm_w32_e16"},
        {"embedding": "learned", "__model__": "noprop_dt_t3_w32_e20"},
        {"embedding": "prototype", "__model__": "noprop_dt_t3_w32_e64"},
    ],
    "predsim": [
        {"loss": "pred"},
        {"loss": "sim"},
        {"__model__": "cnn_3block", "dim_in_decoder": 128},
    ],
}


def _cases() -> list[RuleCase]:
    cases = []
    for name in RULES.names():
        native = small_native(name)
        cases.append(RuleCase(name, native))
        for hp in VARIANTS.get(name, []):
            hp = dict(hp)
            model = str(hp.pop("__model__", native))
            cases.append(RuleCase(name, model, hp))
    return cases


CASES = _cases()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conformance(case: RuleCase, check) -> None:
    check(case)


def test_every_rule_is_covered() -> None:
    assert {c.rule for c in CASES} == set(RULES.names())
