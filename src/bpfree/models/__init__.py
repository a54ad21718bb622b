"""Model registry: ``mlp_<depth>x<width>`` for any depth and width, and ``cnn_3block``."""

from __future__ import annotations

import re
from collections.abc import Callable

from bpfree.errors import ConfigError
from bpfree.models.base import BlockNet, ConvBlock, DenseBlock, ModelSpec
from bpfree.models.cnn import build_cnn_3block
from bpfree.models.mlp import build_mlp
from bpfree.registry import Registry

Builder = Callable[[tuple[int, int, int]], BlockNet]

MODELS: Registry[Builder] = Registry("model")
MODELS.register("cnn_3block", build_cnn_3block)


def _mlp(match: re.Match[str]) -> Builder:
    depth, width = int(match.group(1)), int(match.group(2))
    if not (1 <= depth <= 64 and 1 <= width <= 65536):
        raise ConfigError(f"mlp depth must be 1..64 and width 1..65536, got {match.group(0)}")
    return lambda shape: build_mlp(match.group(0), depth, width, shape)


MODELS.register_pattern(r"mlp_(\d+)x(\d+)", _mlp, "mlp_<depth>x<width>")

EXAMPLE_MODELS = ("mlp_2x1000", "mlp_3x1000", "mlp_3x2000", "mlp_4x2000", "cnn_3block")


def model_family(name: str) -> str:
    return "cnn" if name == "cnn_3block" else "mlp" if name.startswith("mlp_") else "?"


def create_model(name: str, input_shape: tuple[int, int, int]) -> BlockNet:
    """Build the named model for inputs of ``input_shape`` (C, H, W)."""
    return MODELS.get(name)(input_shape)


__all__ = [
    "EXAMPLE_MODELS",
    "MODELS",
    "BlockNet",
    "ConvBlock",
    "DenseBlock",
    "ModelSpec",
    "create_model",
    "model_family",
]
