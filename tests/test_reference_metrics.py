"""Refactors must not change behaviour: tiny runs give bit-identical metrics to the reference.

The reference (``tests/data/reference_metrics.json``) was recorded by ``tests/reference_runs.py``
before the rule-toolkit refactor; a case whose behaviour was changed on purpose is re-recorded in
the commit that changes it, and that commit says why.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from reference_runs import CASES, REFERENCE, run_case

STORED = json.loads(REFERENCE.read_text())["cases"]


def _same(want: Any, got: Any, where: str) -> list[str]:
    """Paths where ``got`` differs from ``want`` (keys ``got`` adds are ignored)."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [where]
        return [p for k, v in want.items() for p in _same(v, got.get(k, "<gone>"), f"{where}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(want) != len(got):
            return [where]
        pairs = enumerate(zip(want, got, strict=True))
        return [p for i, (a, b) in pairs for p in _same(a, b, f"{where}[{i}]")]
    return [] if want == got else [f"{where}: {want!r} -> {got!r}"]


@pytest.mark.parametrize("label,rule,model,hparams", CASES, ids=[c[0] for c in CASES])
def test_metrics_are_bit_identical_to_the_reference(
    label: str, rule: str, model: str, hparams: dict[str, Any]
) -> None:
    diff = _same(STORED[label], run_case(rule, model, hparams), label)
    assert not diff, "behaviour changed:\n" + "\n".join(diff[:10])
