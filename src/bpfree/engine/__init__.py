"""Trainer, evaluation, early stopping, checkpoints, seeding and run directories."""

from bpfree.engine.build import build_rule, load_data
from bpfree.engine.result import RunResult
from bpfree.engine.trainer import RunInterrupted, Trainer, evaluate, train

__all__ = ["RunInterrupted", "RunResult", "Trainer", "build_rule", "evaluate", "load_data", "train"]
