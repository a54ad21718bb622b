"""Checkpoints: everything a run needs to continue exactly where it stopped.

Written atomically after every epoch, outside the timed windows; removed when the run finishes.
Holds the rule (modules, optimizers, extra state), the batch and rule generators, the global RNG
(a model's own dropout draws from it), the loop state (phase, epoch, history, cost, best
weights, early stopping), plus the resolved config, so a resume with other settings is refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from bpfree.config import TrainConfig
from bpfree.engine.io import save_torch
from bpfree.engine.seeding import global_rng_state, set_global_rng_state
from bpfree.engine.state import LoopState
from bpfree.errors import ConfigError
from bpfree.rules import Rule

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(
    out: Path, config: TrainConfig, rule: Rule, batches: torch.Generator, state: LoopState
) -> None:
    assert rule.generator is not None
    save_torch(
        out / CHECKPOINT,
        {
            "config": config.to_dict(),
            "rule": rule.state_dict(),
            "batch_generator": batches.get_state(),
            "rule_generator": rule.generator.get_state(),
            "global_rng": global_rng_state(rule.generator.device),
            **state.to_checkpoint(),
        },
    )


def load_checkpoint(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint in ``out`` (None if there is none); refused if made with other settings."""
    path = out / CHECKPOINT
    if not path.exists():
        return None
    try:
        # weights_only: tensors and plain containers only, so a planted file cannot run code
        with warnings.catch_warnings():  # torch warns about odd pickles: the error says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or holding objects that are not data
        raise ConfigError(
            f"{path} cannot be read as a bpfree checkpoint ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or ['empty'])[0][:200]}); remove it to start the run afresh"
        ) from None
    if not isinstance(state, dict) or "config" not in state:
        raise ConfigError(f"{path} is not a bpfree checkpoint; remove it to start afresh")
    if state["config"] != config.to_dict():
        new = config.to_dict()
        diff = sorted(k for k in state["config"] if state["config"][k] != new.get(k))
        raise ConfigError(
            f"{out} holds a run with different settings ({', '.join(diff)}); "
            "resume it with the same settings or choose another --out"
        )
    return state


def restore(rule: Rule, batches: torch.Generator, ckpt: dict[str, Any]) -> None:
    """Load a checkpoint's rule state and generators into a freshly built rule."""
    rule.load_state_dict(ckpt["rule"])
    batches.set_state(ckpt["batch_generator"])
    gen = rule.generator
    assert gen is not None
    state = ckpt["rule_generator"]
    gen.set_state(state.to(gen.device) if gen.device.type != "cpu" else state)
    if "global_rng" in ckpt:  # checkpoints before it was saved: the run continues unseeded
        set_global_rng_state(ckpt["global_rng"], gen.device)
