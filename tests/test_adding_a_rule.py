"""docs/adding-a-rule.md stays true: its worked example registers from a temporary module,
passes the conformance suite, runs in a tiny comparison, and computes the shipped rule's update;
registration refuses a rule that declares no native network."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch

from bpfree.comparison import compare
from bpfree.rules import RULES, Hparams, Rule, RuleInfo, register_rule
from bpfree.testing.conformance import RuleCase, run_all

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-rule.md"


def _example_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "the page holds one Python block: the worked example"
    return blocks[0]


@pytest.fixture
def doc_rule(tmp_path: Path) -> Iterator[type[Rule]]:
    """The example's rule, registered from a temporary module in place of the shipped one."""
    shipped = RULES.unregister("fa")
    path = tmp_path / "fa_from_the_doc.py"
    path.write_text(_example_code())
    spec = importlib.util.spec_from_file_location("fa_from_the_doc", path)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    try:
        spec.loader.exec_module(module)
        registered = RULES.get("fa")
        assert registered is not shipped and registered.__module__ == "fa_from_the_doc"
        yield registered
    finally:
        sys.modules.pop(spec.name, None)
        if "fa" in RULES.names():
            RULES.unregister("fa")
        RULES.register("fa", shipped)


def test_the_example_passes_the_conformance_suite(doc_rule: type[Rule]) -> None:
    run_all(RuleCase("fa", "mlp_2x32"))


def test_the_example_runs_in_a_tiny_comparison(doc_rule: type[Rule], tmp_path: Path) -> None:
    result = compare(
        rules="fa",
        dataset="digits",
        out=tmp_path / "cmp",
        seeds=1,
        epochs=1,
        train_samples=200,
        models={"fa": "mlp_2x16"},
        report=False,
        progress=False,
        log=lambda msg: None,
    )
    assert {r.status for r in result.results.values()} == {"completed"}
    assert {r.rule for r in result.results.values()} == {"fa", "bp"}


def test_the_example_computes_the_shipped_rules_update(doc_rule: type[Rule]) -> None:
    case = RuleCase("fa", "mlp_2x16")
    from_doc = case.make()
    RULES.unregister("fa")
    RULES.register("fa", _shipped())
    try:
        shipped = case.make()
    finally:
        RULES.unregister("fa")
        RULES.register("fa", doc_rule)
    assert type(shipped) is not type(from_doc)
    for rule in (from_doc, shipped):
        rule.train()
        for step in range(3):
            rule.train_step(case.batch(step))
    got, want = from_doc.modules.state_dict(), shipped.modules.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def _shipped() -> type[Rule]:
    return importlib.import_module("bpfree.rules.feedback_alignment").FeedbackAlignment


def test_a_rule_without_a_native_network_is_refused_at_registration() -> None:
    @dataclass(frozen=True)
    class NoHparams(Hparams):
        pass

    class Nameless(Rule):
        info = RuleInfo(
            name="nonative",
            title="t",
            citation="c",
            reverse_ad="none",
            backward_locking=False,
            weight_transport=False,
            forward_passes_per_step=1,
            families=("mlp",),
        )
        Hparams = NoHparams

    with pytest.raises(TypeError, match="declares no native network"):
        register_rule(Nameless)
    assert "nonative" not in RULES.names()
