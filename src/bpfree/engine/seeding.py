"""One run seed; each random component draws from its own named generator derived from it."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for component ``name``, stable across Python versions and machines."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, name))
    return g
