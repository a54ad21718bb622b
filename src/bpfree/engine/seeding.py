"""One run seed; each random component draws from its own named generator derived from it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for component ``name``, stable across Python versions and machines."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, name))
    return g


@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """The global RNG, which modules such as ``nn.Dropout`` draw from, seeded from the run seed
    for the run, and the caller's state put back after. Rules draw from their own generators;
    a model's dropout in training mode (a text encoder's, a backprop twin's) draws from this."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(seed, "global"))
        yield


def global_rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG's state (and the CUDA device's), for a checkpoint."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_global_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
