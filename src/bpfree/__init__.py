"""bpfree: train neural networks without backpropagation, and measure honestly what it buys.

The public API is flat and keyword-only::

    import bpfree
    result = bpfree.train(rule="mf", dataset="fashion_mnist", epochs=30)
    print(result.metrics["test_accuracy"])
    bpfree.compare(rules="mf,ff", dataset="digits", out="runs/cmp", seeds=2, epochs=2)
    bpfree.report("runs/cmp")
    bpfree.sweep(rule="mf", dataset="digits", trials=10, study="mf-digits")

Names are resolved lazily (PEP 562): ``import bpfree`` does not import torch, so the command
line answers ``--version`` and ``--help`` at once.
"""

from __future__ import annotations

import importlib
from typing import Any

from bpfree.errors import BpfreeError, ConfigError, DataError
from bpfree.version import __version__

_LAZY = {
    "train": "bpfree.engine.parallel",
    "Trainer": "bpfree.engine.trainer",
    "RunResult": "bpfree.engine.result",
    "compare": "bpfree.comparison.runner",
    "sweep": "bpfree.sweeps.api",
    "report": "bpfree.reporting",
    "TrainConfig": "bpfree.config",
    "DATASETS": "bpfree.data",
    "load_dataset": "bpfree.data",
    "MODELS": "bpfree.models",
    "create_model": "bpfree.models",
    "RULES": "bpfree.rules",
    "create_rule": "bpfree.rules",
    "build_rule": "bpfree.engine.build",
    "load_data": "bpfree.engine.build",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'bpfree' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


def list_rules() -> list[str]:
    return importlib.import_module("bpfree.rules").RULES.names()


def list_models() -> list[str]:
    return importlib.import_module("bpfree.models").MODELS.names(include_patterns=True)


def list_datasets() -> list[str]:
    return importlib.import_module("bpfree.data").DATASETS.names()


__all__ = [
    "DATASETS",
    "MODELS",
    "RULES",
    "BpfreeError",
    "ConfigError",
    "DataError",
    "RunResult",
    "TrainConfig",
    "Trainer",
    "__version__",
    "build_rule",
    "compare",
    "create_model",
    "create_rule",
    "list_datasets",
    "list_models",
    "list_rules",
    "load_data",
    "load_dataset",
    "report",
    "sweep",
    "train",
]
