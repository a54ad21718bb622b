"""protocol.md, enforced in code and proven over the whole rule registry, variants included:
one budget in data passes, twins matched by default, divergence caught for every rule."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bpfree.comparison.plan import assign_twins, build_plan, parse_entries
from bpfree.config import TrainConfig
from bpfree.engine import Trainer
from bpfree.rules import RULES, baseline_rule
from bpfree.rules.toolkit import OPTIMIZER_FIELDS
from bpfree.testing.conformance import RuleCase, tiny_data
from test_conformance import CASES

EPOCHS = 6  # enough for every variant's phases (ff layerwise + classifier on 4 layers: 5)
# Every rule and variant that can stand beside a twin (plain backprop is the twin itself).
COMPARED = [c for c in CASES if c.rule != baseline_rule() or c.hparams]
TINY = {"dataset": "digits", "train_samples": 120, "device": "cpu", "eval_batch_size": 500}


def _entry_spec(case: RuleCase) -> str:
    return ":".join([case.rule, *(f"{k}={v}" for k, v in case.hparams.items())])


def _plan(case: RuleCase, twin: str = "matched") -> tuple[Any, Any]:
    spec = _entry_spec(case)
    entries = parse_entries(spec, "digits", {case.rule: case.model})
    entries = assign_twins(entries, twin)
    base = {**TINY, "epochs": EPOCHS, "patience": EPOCHS + 1}
    plan = build_plan(entries, "digits", [0], base)
    rule = next(r for r in plan if not r.is_baseline)
    twin_run = next(r for r in plan if r.is_baseline)
    return rule, twin_run


@pytest.mark.parametrize("case", COMPARED, ids=str)
def test_no_run_consumes_more_than_its_twin(case: RuleCase) -> None:
    rule_run, twin_run = _plan(case)
    data = tiny_data("digits", 120)
    results = {}
    for run in (rule_run, twin_run):
        trainer = Trainer(run.config, None, progress=False, data=data, evaluate_test=False)
        results[run.label] = trainer.run()
    rule, twin = results[rule_run.label], results[twin_run.label]
    assert twin.status == "completed" and twin.metrics["data_passes"] == EPOCHS
    assert rule.status == "completed", rule.reason
    assert rule.metrics["data_passes"] <= twin.metrics["data_passes"], (
        f"{case}: {rule.metrics['data_passes']} data passes against its twin's "
        f"{twin.metrics['data_passes']} under --epochs {EPOCHS}"
    )
    # every phase's epochs add up to what was consumed
    epochs = sum(p["epochs"] for p in rule.metrics["phases"].values())
    assert epochs == rule.metrics["epochs_trained"] <= EPOCHS


@pytest.mark.parametrize("case", COMPARED, ids=str)
def test_an_untuned_twin_is_matched_to_its_rule(case: RuleCase) -> None:
    rule_run, twin_run = _plan(case)
    rule_hp, twin_hp = rule_run.config.hparams, twin_run.config.hparams
    for key in OPTIMIZER_FIELDS:
        if key in rule_hp:
            assert twin_hp[key] == rule_hp[key], f"{case}: twin {key}={twin_hp[key]}"
    assert twin_run.config.rule == baseline_rule()
    own = _plan(case, twin="own")[1].config.hparams
    assert own == RULES.get(baseline_rule()).Hparams().to_dict()  # asked for: backprop's own


@pytest.mark.parametrize("case", CASES, ids=str)
def test_an_exploding_but_finite_loss_ends_the_run_diverged(
    case: RuleCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = RULES.get(case.rule)
    real = cls.train_step

    def exploding(self: Any, batch: Any) -> torch.Tensor:
        loss = real(self, batch)
        self._steps_seen = getattr(self, "_steps_seen", 0) + 1  # per rule object (the FLOP
        # probes step copies of the rule)
        return loss if self._steps_seen == 1 else loss.abs() * 1e6 + 1e6  # finite, far above

    monkeypatch.setattr(cls, "train_step", exploding)
    hparams = {"batch_size": 32, **case.hparams}  # several steps in every phase's epoch
    config = TrainConfig.build(
        {**TINY, "rule": case.rule, "model": case.model, "hparams": hparams, "epochs": 6}
    )
    result = Trainer(config, None, progress=False, data=tiny_data("digits", 120)).run()
    assert result.status == "diverged", f"{case}: {result.status}"
    assert "divergence bound" in result.reason and result.metrics["test_accuracy"] is None


@pytest.mark.parametrize("rule", sorted(RULES.names()))
def test_non_finite_parameters_end_the_run_diverged(
    rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = RULES.get(rule)
    real = cls.train_step

    def poisoning(self: Any, batch: Any) -> torch.Tensor:
        loss = real(self, batch)
        with torch.no_grad():
            next(iter(self.modules.parameters())).view(-1)[0] = float("nan")
        return loss

    monkeypatch.setattr(cls, "train_step", poisoning)
    case = next(c for c in CASES if c.rule == rule)
    config = TrainConfig.build({**TINY, "rule": rule, "model": case.model, "epochs": 6})
    result = Trainer(config, None, progress=False, data=tiny_data("digits", 120)).run()
    assert result.status == "diverged", result.reason
    assert "non-finite" in result.reason
