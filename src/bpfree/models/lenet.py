"""``lenet5``: LeNet-5 (LeCun et al. 1998) as four blocks, the network the sign-symmetry rules
are benchmarked on in biotorch (jsalbert/biotorch, ``le_net_mnist``).

    block 1  conv5x5 (C_in -> 6, padding 2) -> ReLU -> maxpool 2     (B, 6, H/2, W/2)
    block 2  conv5x5 (6 -> 16, padding p)   -> ReLU -> maxpool 2     (B, 16, H2, W2)
    block 3  flatten -> dense 16*H2*W2 -> 120 -> ReLU
    block 4  dense 120 -> 84 -> ReLU                                 (a rule adds 84 -> C)

On 28x28 images (p = 0) this is the classic net on 32x32: 28 -> 14 -> 10 -> 5, 16*5*5 = 400
features, and the dense 400 -> 120 layer is the classic 5x5 "C5" convolution on the 5x5 map.
Smaller images get the least padding p that leaves block 2 a map of at least 2x2 (8x8 digits:
8 -> 4 -> 2 -> 1, p = 1); images under 8x8 are refused. ReLU and max pooling, as biotorch's
LeNet, where LeCun used scaled tanh and trainable subsampling.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bpfree.errors import ConfigError
from bpfree.models.base import BlockNet, DenseBlock, ModelEntry, ModelSpec

NAME = "lenet5"
DESCRIPTION = "LeNet-5: 2 x (conv5x5 -> ReLU -> maxpool2), 6/16 channels; dense 120, 84 (ReLU)"
KERNEL = 5
MIN_SIDE = 8  # the smallest image side lenet5 accepts (the 8x8 digits)


class LeNetConvBlock(nn.Module):
    """Conv5x5 -> ReLU -> MaxPool 2x2; ``conv`` and ``pool`` are exposed for rules that need
    z = conv(a) (the order a rule must follow: conv, ReLU, then the other children)."""

    def __init__(self, in_channels: int, out_channels: int, padding: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=KERNEL, padding=padding)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, Cin, H, W) -> (B, Cout, (H + 2p - 4) // 2, (W + 2p - 4) // 2)
        return self.pool(torch.relu(self.conv(x)))


def _second_padding(side: int) -> int:
    """The least padding that leaves conv 2 (5x5) an output side of at least 2 (for the pool):
    0 from 6 up (the classic net), 1 for sides 4 and 5."""
    return max(0, math.ceil((KERNEL + 1 - side) / 2))


def build_lenet5(input_shape: tuple[int, int, int]) -> BlockNet:
    c, h, w = input_shape
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ConfigError(
            f"{NAME} needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {h}x{w}"
        )
    h1, w1 = h // 2, w // 2  # conv 1 keeps the size (padding 2), the pool halves it
    pad = (_second_padding(h1), _second_padding(w1))
    h2 = (h1 + 2 * pad[0] - (KERNEL - 1)) // 2
    w2 = (w1 + 2 * pad[1] - (KERNEL - 1)) // 2
    blocks: list[nn.Module] = [
        LeNetConvBlock(c, 6, (2, 2)),
        LeNetConvBlock(6, 16, pad),
        DenseBlock(16 * h2 * w2, 120),
        DenseBlock(120, 84),
    ]
    dims = [6 * h1 * w1, 16 * h2 * w2, 120, 84]
    return BlockNet(ModelSpec(NAME, "cnn", DESCRIPTION), blocks, dims)


LENET5 = ModelEntry(NAME, "cnn", DESCRIPTION, build_lenet5)
