"""``cnn_3block``: CaFo's cascade, 3 x (conv3x3 -> ReLU -> maxpool2 -> BatchNorm), 32/128/512."""

from __future__ import annotations

from bpfree.errors import ConfigError
from bpfree.models.base import BlockNet, ConvBlock, ModelEntry, ModelSpec

CHANNELS = (32, 128, 512)
DESCRIPTION = "3 x (conv3x3 -> ReLU -> maxpool2 -> BatchNorm), 32/128/512 channels"


def build_cnn_3block(input_shape: tuple[int, int, int]) -> BlockNet:
    c, h, w = input_shape
    if h < 8 or w < 8:
        raise ConfigError(f"cnn_3block needs images of at least 8x8 pixels, got {h}x{w}")
    blocks, dims = [], []
    for out in CHANNELS:
        blocks.append(ConvBlock(c, out))
        c, h, w = out, h // 2, w // 2
        dims.append(c * h * w)
    spec = ModelSpec("cnn_3block", "cnn", DESCRIPTION)
    return BlockNet(spec, blocks, dims)


CNN_3BLOCK = ModelEntry("cnn_3block", "cnn", DESCRIPTION, build_cnn_3block)
