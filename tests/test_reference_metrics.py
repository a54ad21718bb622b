"""Refactors must not change behaviour: tiny runs give bit-identical metrics to the reference.

The reference is the metrics the code of commit ``recorded_at`` computes (see
``tests/reference_runs.py``): stored for the machine it was recorded on, recomputed from that
commit's code on any other machine (float kernels differ between CPUs, so a stored number is
exact only where it was made).
"""

from __future__ import annotations

import json
import subprocess
from functools import cache
from typing import Any

import pytest

from reference_runs import CASES, REFERENCE, ROOT, machine, run_at, run_case

STORED = json.loads(REFERENCE.read_text())


@cache
def reference() -> dict[str, Any]:
    if STORED["machine"] == machine():
        return STORED["cases"]
    commit = STORED["recorded_at"]
    known = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True
    )
    if known.returncode != 0:
        pytest.skip(
            f"the reference was recorded on another machine ({STORED['machine']}) and its "
            f"commit {commit} is not in this clone, so it cannot be recomputed here"
        )
    return run_at(commit)


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


def test_the_reference_covers_every_case() -> None:
    assert set(STORED["cases"]) == {label for label, *_ in CASES}


@pytest.mark.parametrize("label,rule,model,hparams", CASES, ids=[c[0] for c in CASES])
def test_metrics_are_bit_identical_to_the_reference(
    label: str, rule: str, model: str, hparams: dict[str, Any]
) -> None:
    diff = _same(reference()[label], run_case(rule, model, hparams), label)
    assert not diff, "behaviour changed:\n" + "\n".join(diff[:10])
