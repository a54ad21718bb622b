"""Trainer, evaluation, early stopping, checkpoints, seeding and run directories."""

from bpfree.engine.build import build_rule, load_data
from bpfree.engine.parallel import run_config, train
from bpfree.engine.result import RunResult
from bpfree.engine.trainer import RunInterrupted, Trainer, evaluate

__all__ = [
    "RunInterrupted",
    "RunResult",
    "Trainer",
    "build_rule",
    "evaluate",
    "load_data",
    "run_config",
    "train",
]
