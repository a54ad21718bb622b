"""``mlp_<depth>x<width>``: depth hidden ReLU layers of ``width`` units on flattened input."""

from __future__ import annotations

import math

from bpfree.models.base import BlockNet, DenseBlock, ModelSpec


def build_mlp(name: str, depth: int, width: int, input_shape: tuple[int, int, int]) -> BlockNet:
    d_in = math.prod(input_shape)
    dims = [d_in] + [width] * depth
    blocks = [DenseBlock(dims[i], dims[i + 1]) for i in range(depth)]
    spec = ModelSpec(name, "mlp", f"MLP, {depth} hidden layers of {width} ReLU units")
    return BlockNet(spec, blocks, dims[1:])
