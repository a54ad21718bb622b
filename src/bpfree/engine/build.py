"""One way to set up a run: the data of a configuration, and its rule ready to train.

Used by the trainer, the conformance suite, sweeps and benchmarks alike, so "a rule set up as
the trainer sets it up" means one thing: the model's initial weights drawn from the run seed
(``derive_seed(seed, "init")``, the caller's global RNG state untouched), the rule's own
generator derived from the run seed (``generator(seed, "rule")``).
"""

from __future__ import annotations

import torch

from bpfree.config import TrainConfig
from bpfree.data import DATASETS, DataBundle, load_dataset
from bpfree.engine.budget import allot_epochs
from bpfree.engine.environment import resolve_device
from bpfree.engine.finetune import apply_trainable, load_body, load_head
from bpfree.engine.seeding import derive_seed, generator
from bpfree.models import create_model
from bpfree.models.text import text_tokenizer
from bpfree.rules import Phase, Rule, create_rule


def load_data(config: TrainConfig, device: torch.device | None = None) -> DataBundle:
    """The dataset of ``config`` (its split, data seed, training subset and k-shot draw) on
    ``device``; a text dataset tokenised by the model's own tokenizer."""
    text = DATASETS.get(config.dataset).is_text
    assert config.model is not None
    return load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        val_fraction=config.val_fraction,
        data_seed=config.data_seed,
        train_samples=config.train_samples,
        device=device if device is not None else resolve_device(config.device),
        k_shot=config.k_shot,
        k_shot_seed=derive_seed(config.seed, "k_shot"),
        tokenizer=text_tokenizer(config.model) if text else None,
        max_length=config.max_length,
    )


def build_rule(config: TrainConfig, data: DataBundle, device: torch.device | None = None) -> Rule:
    """``config``'s rule with its model attached, initialised from the run seed."""
    device = device if device is not None else resolve_device(config.device)
    rule = create_rule(config.rule, config.hparams)
    assert config.model is not None  # resolved to the native network by TrainConfig
    # Parameter initialisation draws from the global RNG: seed it from the run seed, and keep
    # the caller's RNG state untouched.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(config.seed, "init"))
        model = create_model(config.model, data.input_shape)
        saved = load_body(model, config.init_from, config.model) if config.init_from else {}
        apply_trainable(model, config)
        rule.setup(model, data.num_classes, device, generator(config.seed, "rule", device))
        if saved:
            load_head(rule.modules, saved)
    return rule


def phase_plan(config: TrainConfig) -> list[Phase]:
    """The run's phases with their share of its data passes, worked out before any data is
    loaded (on a model without memory); ConfigError when the budget cannot cover them."""
    rule = create_rule(config.rule, config.hparams)
    assert config.model is not None
    with torch.device("meta"):
        rule.model = create_model(config.model, DATASETS.get(config.dataset).input_shape)
    return allot_epochs(rule.phases(), config.epochs, config.rule)
