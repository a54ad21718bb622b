"""Native architectures, exposed as a sequence of blocks so layer-local rules can work per block.

A model is the *body* only: hidden blocks, no classifier head. A rule adds whatever output it
needs (backprop one linear head; Mono-Forward one projection per layer; CaFo one predictor per
block), so the body is the same network for a rule and its backprop twin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "mlp" | "cnn"
    description: str


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its name, family, one-line description and builder."""

    name: str
    family: str  # "mlp" | "cnn": what the rules' ``families`` refer to
    description: str
    build: Callable[[tuple[int, int, int]], BlockNet]  # input shape (C, H, W) -> the body


class BlockNet(nn.Module):
    """A stack of blocks; ``block_dims[i]`` is the flattened output size of block i. ``bias``
    says whether the network has biases: a head added by a rule follows it."""

    def __init__(
        self, spec: ModelSpec, blocks: list[nn.Module], block_dims: list[int], bias: bool = True
    ) -> None:
        super().__init__()
        self.spec = spec
        self.bias = bias
        self.blocks = nn.ModuleList(blocks)
        self.block_dims = list(block_dims)

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def out_dim(self) -> int:
        return self.block_dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)


class DenseBlock(nn.Module):
    """flatten -> Linear -> ReLU (-> dropout); ``linear`` is exposed for rules that need
    z = W a + b, ``p_drop`` for rules that draw their own dropout masks (PEPITA shares one mask
    between its two passes). Dropout is inverted (kept units scaled by 1 / (1 - p)) and acts in
    training mode only, as ``nn.Dropout``."""

    def __init__(
        self, in_features: int, out_features: int, *, bias: bool = True, p_drop: float = 0.0
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.p_drop = p_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.linear(x.flatten(1)))  # (B, in) -> (B, out)
        if self.p_drop > 0:
            a = F.dropout(a, self.p_drop, self.training)
        return a


class ConvBlock(nn.Module):
    """Conv3x3 (stride 1, pad 1) -> ReLU -> MaxPool 2x2 -> BatchNorm (CaFo's block)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, Cin, H, W) -> (B, Cout, H/2, W/2)
        return self.norm(self.pool(torch.relu(self.conv(x))))
