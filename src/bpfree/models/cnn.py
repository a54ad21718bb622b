"""``cnn_3block``: CaFo's cascade, 3 x (conv3x3 -> ReLU -> maxpool2 -> BatchNorm), 32/128/512."""

from __future__ import annotations

from bpfree.models.base import BlockNet, ConvBlock, ModelSpec

CHANNELS = (32, 128, 512)


def build_cnn_3block(input_shape: tuple[int, int, int]) -> BlockNet:
    c, h, w = input_shape
    if h < 8 or w < 8:
        from bpfree.errors import ConfigError

        raise ConfigError(f"cnn_3block needs images of at least 8x8 pixels, got {h}x{w}")
    blocks, dims = [], []
    for out in CHANNELS:
        blocks.append(ConvBlock(c, out))
        c, h, w = out, h // 2, w // 2
        dims.append(c * h * w)
    spec = ModelSpec("cnn_3block", "cnn", "3 blocks conv3x3-ReLU-maxpool2-BatchNorm, 32/128/512")
    return BlockNet(spec, blocks, dims)
