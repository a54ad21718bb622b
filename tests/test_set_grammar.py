"""One ``--set`` grammar for train, compare and sweep: ``key=value`` is a trainer setting when
the key names one, else the rule's own hyperparameter; ``rule.key=value`` scopes it to a rule."""

from __future__ import annotations

import pytest

from bpfree.comparison.plan import split_sets
from bpfree.config import TrainConfig, apply_sets, parse_sets
from bpfree.errors import ConfigError


def test_items_are_sorted_by_what_they_set() -> None:
    parsed = parse_sets(["patience=3", "lr=0.01", "mf.schedule=sequential", "hparams.momentum=0"])
    assert parsed.trainer == {"patience": 3}
    assert parsed.rule == {"lr": 0.01, "momentum": 0}
    assert parsed.scoped == {"mf": {"schedule": "sequential"}}


@pytest.mark.parametrize("item", ["lr", "=3", " = "])
def test_malformed_items_are_errors(item: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_sets([item])


def test_train_and_sweep_accept_plain_and_scoped_keys() -> None:
    values = apply_sets(
        {"rule": "mf", "dataset": "digits"}, ["lr=0.002", "mf.schedule=sequential", "epochs=4"]
    )
    config = TrainConfig.build(values)
    assert config.epochs == 4
    assert config.hparams["lr"] == 0.002 and config.hparams["schedule"] == "sequential"


def test_train_refuses_another_rules_scope_and_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="'ff' is not the rule of this run"):
        apply_sets({"rule": "mf", "dataset": "digits"}, ["ff.lr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown setting 'lrr'.*did you mean: lr"):
        TrainConfig.build(apply_sets({"rule": "mf", "dataset": "digits"}, ["lrr=0.1"]))


def test_compare_gives_a_plain_key_to_every_compared_rule_that_has_it() -> None:
    trainer, scoped = split_sets(
        ["patience=2", "lr=0.01", "label_scale=2", "cafo.ridge=3", "bp.lr=0.1"],
        ["mf", "ff", "cafo:blocks=dfa"],
    )
    assert trainer == {"patience": 2}
    assert scoped["mf"] == {"lr": 0.01}
    assert scoped["ff"] == {"lr": 0.01, "label_scale": 2}  # only ff has label_scale
    assert scoped["cafo"] == {"ridge": 3, "lr": 0.01}  # every variant of cafo
    assert scoped["bp"] == {"lr": 0.1}  # the twins: only when named


def test_compare_refuses_what_no_compared_rule_takes() -> None:
    with pytest.raises(ConfigError, match="no compared rule has a setting 'threshold'"):
        split_sets(["threshold=2"], ["mf"])
    with pytest.raises(ConfigError, match="'dfa' is not among the compared rules"):
        split_sets(["dfa.lr=0.1"], ["mf"])
    with pytest.raises(ConfigError, match="--seeds"):
        split_sets(["seed=3"], ["mf"])


def test_seeds_parse_as_a_count_a_list_or_a_range_and_zero_says_how_to_run_seed_zero() -> None:
    from bpfree.comparison.plan import parse_seeds

    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,5,9") == [0, 5, 9]
    with pytest.raises(ConfigError, match="--seeds 1 runs seed 0 alone"):
        parse_seeds("0")
    with pytest.raises(ConfigError, match=r"a count .* or a range"):
        parse_seeds("two")
    assert parse_seeds("2-2") == [2] and parse_seeds("0,3-5") == [0, 3, 4, 5]
    with pytest.raises(ConfigError, match="runs backwards"):
        parse_seeds("4-3")
    with pytest.raises(ConfigError, match="listed twice"):
        parse_seeds("0-2,1")
