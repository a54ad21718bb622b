"""Checkpoints: everything a run needs to continue exactly where it stopped.

Written atomically after every epoch, outside the timed windows; removed when the run finishes.
Holds the rule (modules, optimizers, extra state), both generators, the accumulated cost, the
per-epoch history, the phase and epoch, the best weights of the phase and the early-stopping
state, plus the resolved config, so a resume with other settings is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bpfree.config import TrainConfig
from bpfree.engine.early_stopping import EarlyStopping
from bpfree.engine.io import save_torch
from bpfree.errors import ConfigError
from bpfree.meters import Reading
from bpfree.rules import Rule

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(
    out: Path,
    config: TrainConfig,
    rule: Rule,
    batches: torch.Generator,
    cost: dict[str, Reading],
    history: list[dict[str, Any]],
    phase: int,
    epoch_in_phase: int,
    best: dict[str, Any] | None,
    stopper: EarlyStopping,
) -> None:
    assert rule.generator is not None
    save_torch(
        out / CHECKPOINT,
        {
            "config": config.to_dict(),
            "rule": rule.state_dict(),
            "batch_generator": batches.get_state(),
            "rule_generator": rule.generator.get_state(),
            "cost": {k: r.to_dict() for k, r in cost.items()},
            "history": history,
            "phase": phase,
            "epoch_in_phase": epoch_in_phase,
            "best": best,
            "early_stopping": stopper.state(),
        },
    )


def load_checkpoint(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint in ``out`` (None if there is none); refused if made with other settings."""
    path = out / CHECKPOINT
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["config"] != config.to_dict():
        new = config.to_dict()
        diff = sorted(k for k in state["config"] if state["config"][k] != new.get(k))
        raise ConfigError(
            f"{out} holds a run with different settings ({', '.join(diff)}); "
            "resume it with the same settings or choose another --out"
        )
    return state
