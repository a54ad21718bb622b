"""``mlp_<depth>x<width>``: depth hidden ReLU layers of ``width`` units on flattened input."""

from __future__ import annotations

import math
import re

from bpfree.errors import ConfigError
from bpfree.models.base import BlockNet, DenseBlock, ModelEntry, ModelSpec

MLP_PATTERN = r"mlp_(\d+)x(\d+)"
MLP_DISPLAY = "mlp_<depth>x<width>"
MLP_EXAMPLES = ("mlp_2x1000", "mlp_3x1000", "mlp_3x2000", "mlp_4x2000")


def build_mlp(name: str, depth: int, width: int, input_shape: tuple[int, int, int]) -> BlockNet:
    d_in = math.prod(input_shape)
    dims = [d_in] + [width] * depth
    blocks = [DenseBlock(dims[i], dims[i + 1]) for i in range(depth)]
    spec = ModelSpec(name, "mlp", f"MLP, {depth} hidden layers of {width} ReLU units")
    return BlockNet(spec, blocks, dims[1:])


def mlp_entry(name: str, depth: int, width: int) -> ModelEntry:
    return ModelEntry(
        name,
        "mlp",
        f"MLP, {depth} hidden layers of {width} ReLU units",
        lambda shape: build_mlp(name, depth, width, shape),
    )


def resolve_mlp(match: re.Match[str]) -> ModelEntry:
    """The entry of a name matching ``MLP_PATTERN`` (depth 1..64, width 1..65536)."""
    depth, width = int(match.group(1)), int(match.group(2))
    if not (1 <= depth <= 64 and 1 <= width <= 65536):
        raise ConfigError(f"mlp depth must be 1..64 and width 1..65536, got {match.group(0)}")
    return mlp_entry(match.group(0), depth, width)
