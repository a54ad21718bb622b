"""``mlp_<depth>x<width>[_drop<pct>][_nobias]``: depth hidden ReLU layers of ``width`` units on
flattened input; ``_drop10`` adds inverted dropout (10%) after every hidden layer, ``_nobias``
drops the biases (PEPITA's and FOTON's networks, e.g. ``mlp_1x1024_drop10_nobias``)."""

from __future__ import annotations

import math
import re

from bpfree.errors import ConfigError
from bpfree.models.base import BlockNet, DenseBlock, ModelEntry, ModelSpec

MLP_PATTERN = r"mlp_(\d+)x(\d+)(?:_drop(\d+))?(_nobias)?"
MLP_DISPLAY = "mlp_<depth>x<width>[_drop<pct>][_nobias]"
MLP_EXAMPLES = ("mlp_2x1000", "mlp_3x1000", "mlp_4x2000", "mlp_1x1024_drop10_nobias")


def describe(depth: int, width: int, p_drop: float, bias: bool) -> str:
    extra = (f", dropout {p_drop:g}" if p_drop else "") + ("" if bias else ", no biases")
    return f"MLP, {depth} hidden layers of {width} ReLU units{extra}"


def build_mlp(
    name: str,
    depth: int,
    width: int,
    input_shape: tuple[int, int, int],
    *,
    p_drop: float = 0.0,
    bias: bool = True,
) -> BlockNet:
    d_in = math.prod(input_shape)
    dims = [d_in] + [width] * depth
    blocks = [DenseBlock(dims[i], dims[i + 1], bias=bias, p_drop=p_drop) for i in range(depth)]
    spec = ModelSpec(name, "mlp", describe(depth, width, p_drop, bias))
    return BlockNet(spec, blocks, dims[1:], bias=bias)


def mlp_entry(
    name: str, depth: int, width: int, p_drop: float = 0.0, bias: bool = True
) -> ModelEntry:
    return ModelEntry(
        name,
        "mlp",
        describe(depth, width, p_drop, bias),
        lambda shape: build_mlp(name, depth, width, shape, p_drop=p_drop, bias=bias),
    )


def resolve_mlp(match: re.Match[str]) -> ModelEntry:
    """The entry of a name matching ``MLP_PATTERN`` (depth 1..64, width 1..65536, dropout
    0..90 percent)."""
    depth, width = int(match.group(1)), int(match.group(2))
    if not (1 <= depth <= 64 and 1 <= width <= 65536):
        raise ConfigError(f"mlp depth must be 1..64 and width 1..65536, got {match.group(0)}")
    pct = int(match.group(3) or 0)
    if pct > 90:
        raise ConfigError(f"mlp dropout must be 0..90 percent, got {match.group(0)}")
    return mlp_entry(match.group(0), depth, width, pct / 100, bias=not match.group(4))
