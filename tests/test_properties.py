"""The property checks of the conformance suite catch what they are meant to catch: backprop's
weight transport (dense and convolutional), a feedback-alignment step cheating with the forward
weights, a rule passing more batches through its first layer than it declares, and backward
locking (backprop and FA locked, DFA and Mono-Forward not; FA declaring otherwise is caught)."""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch

from bpfree.rules.feedback_alignment import FeedbackAlignment
from bpfree.rules.pepita import PEPITA
from bpfree.testing.conformance import (
    RuleCase,
    check_backward_locking_claim,
    check_forward_passes_claim,
    check_weight_transport_claim,
)
from bpfree.testing.properties import (
    count_rows,
    first_block_locked,
    first_layer,
    watch_locking,
    watch_transport,
)

REAL_BUILD = FeedbackAlignment.build


@pytest.mark.parametrize(
    ("model", "expected"),
    [("mlp_2x16", "contracted over its output dimension"), ("cnn_3block", "input gradient")],
)
def test_backprop_is_seen_sending_errors_through_its_forward_weights(
    model: str, expected: str
) -> None:
    case = RuleCase("bp", model)
    rule = case.make()
    rule.train()
    with watch_transport(rule) as uses:
        rule.train_step(case.batch(0))
    assert any(expected in use for use in uses) and "head.weight" in " ".join(uses), uses
    # the first layer's input gradient is never needed: only layers above it transport
    assert not any("blocks.0." in use for use in uses)


def _cheating_build(self: FeedbackAlignment) -> None:
    """FA's build, then its feedback matrices replaced by views of the forward weights above."""
    REAL_BUILD(self)
    above = [*(b.linear.weight for b in self.model.blocks[1:]), self.head.weight]
    for k, w in enumerate(above):
        setattr(self.feedback, f"b{k}", w.detach().t())  # shares W_{l+1}'s storage


def test_feedback_alignment_with_its_forward_weights_as_feedback_is_caught() -> None:
    case = RuleCase("fa", "mlp_2x16")
    check_weight_transport_claim(case)  # the real rule: fixed random matrices
    with mock.patch.object(FeedbackAlignment, "build", _cheating_build):
        rule = case.make()
        rule.train()
        with watch_transport(rule) as uses:
            rule.train_step(case.batch(0))
        assert any("blocks.1.linear.weight" in u for u in uses), uses
        assert any("head.weight" in u for u in uses), uses
        with pytest.raises(AssertionError, match="weight_transport=False"):
            check_weight_transport_claim(case)


def test_a_rule_declaring_fewer_forward_passes_than_it_makes_is_caught() -> None:
    case = RuleCase("pepita", "mlp_1x16_nobias")
    rule = case.make()
    rule.train()
    with count_rows(first_layer(rule)) as rows:
        rule.train_step(case.batch(0))
    assert sum(rows) == 2 * case.batch_size  # the standard and the modulated pass
    check_forward_passes_claim(case)
    with (
        mock.patch.object(PEPITA, "forward_passes", lambda self: 1),
        pytest.raises(AssertionError, match="saw 2 batches per step"),
    ):
        check_forward_passes_claim(case)


def test_rows_are_counted_through_a_jvp() -> None:
    case = RuleCase("fg", "mlp_2x16", {"tangents": 3})
    rule = case.make()
    rule.train()
    with count_rows(first_layer(rule)) as rows:
        rule.train_step(case.batch(0))
    assert sum(rows) == 3 * case.batch_size
    assert torch.is_tensor(rule.model.blocks[0].linear.weight)


@pytest.mark.parametrize(
    ("rule", "model", "locked"),
    [
        ("bp", "mlp_2x16", True),
        ("fa", "mlp_2x16", True),  # the error comes down through layer 2's mask and B
        ("dfa", "mlp_2x16", False),  # straight from the output error
        ("bp", "cnn_3block", True),
        ("mf", "mlp_2x16", False),
    ],
)
def test_the_locking_watch_tells_a_layer_by_layer_error_from_a_direct_one(
    rule: str, model: str, locked: bool
) -> None:
    case = RuleCase(rule, model)
    built = case.make()
    built.train()
    batch = case.batch(0)
    with watch_locking(built, batch.y) as watch:
        built.train_step(batch)
    assert bool(first_block_locked(built, watch)) is locked


def test_a_rule_declaring_no_backward_locking_while_locked_is_caught() -> None:
    case = RuleCase("fa", "mlp_2x16")
    check_backward_locking_claim(case)  # FA declares its locking: nothing to check
    unlocked = dataclasses.replace(FeedbackAlignment.info, backward_locking=False)
    with (
        mock.patch.object(FeedbackAlignment, "info", unlocked),
        pytest.raises(AssertionError, match="backward_locking=False"),
    ):
        check_backward_locking_claim(case)
