"""bpfree: train neural networks without backpropagation, and measure honestly what it buys.

The public API is flat and keyword-only::

    import bpfree
    result = bpfree.train(rule="mf", model="mlp_2x1000", dataset="fashion_mnist", epochs=30)
    print(result.metrics["test_accuracy"])
"""

from __future__ import annotations

__version__ = "0.1.0"

from bpfree.config import TrainConfig
from bpfree.data import DATASETS, load_dataset
from bpfree.engine import RunResult, train
from bpfree.errors import BpfreeError, ConfigError, DataError
from bpfree.models import MODELS, create_model
from bpfree.rules import RULES, create_rule


def list_rules() -> list[str]:
    return RULES.names()


def list_models() -> list[str]:
    return MODELS.names(include_patterns=True)


def list_datasets() -> list[str]:
    return DATASETS.names()


__all__ = [
    "BpfreeError",
    "ConfigError",
    "DataError",
    "RunResult",
    "TrainConfig",
    "__version__",
    "create_model",
    "create_rule",
    "list_datasets",
    "list_models",
    "list_rules",
    "load_dataset",
    "train",
]
