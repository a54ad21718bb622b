"""Model registry: every model is an entry (name, family, description, builder); a family of
models may be a pattern (the MLPs: any depth and width). Adding a model is one module with its
entry, registered here."""

from __future__ import annotations

from bpfree.models.base import BlockNet, ConvBlock, DenseBlock, ModelEntry, ModelSpec
from bpfree.models.cnn import CNN_3BLOCK
from bpfree.models.lenet import LENET5
from bpfree.models.mlp import MLP_DISPLAY, MLP_EXAMPLES, MLP_PATTERN, resolve_mlp
from bpfree.models.noprop import DISPLAY as NOPROP_DISPLAY
from bpfree.models.noprop import EXAMPLES as NOPROP_EXAMPLES
from bpfree.models.noprop import PATTERN as NOPROP_PATTERN
from bpfree.models.noprop import resolve_noprop
from bpfree.models.text import HF_PATTERN, MINILM_ENTRY, resolve_hf
from bpfree.registry import Registry

MODELS: Registry[ModelEntry] = Registry("model")
MODELS.register(CNN_3BLOCK.name, CNN_3BLOCK)
MODELS.register(LENET5.name, LENET5)


MODELS.register_pattern(MLP_PATTERN, resolve_mlp, MLP_DISPLAY, examples=MLP_EXAMPLES)
MODELS.register_pattern(NOPROP_PATTERN, resolve_noprop, NOPROP_DISPLAY, examples=NOPROP_EXAMPLES)
MODELS.register(MINILM_ENTRY.name, MINILM_ENTRY)
MODELS.register_pattern(
    HF_PATTERN, resolve_hf, "hf:<folder or hub name>", examples=("hf:models/my-bert",)
)


def model_family(name: str) -> str:
    """The family ("mlp", "cnn", ...) of a registered model name."""
    return MODELS.get(name).family


def create_model(name: str, input_shape: tuple[int, int, int]) -> BlockNet:
    """Build the named model for inputs of ``input_shape`` (C, H, W)."""
    return MODELS.get(name).build(input_shape)


__all__ = [
    "MODELS",
    "BlockNet",
    "ConvBlock",
    "DenseBlock",
    "ModelEntry",
    "ModelSpec",
    "create_model",
    "model_family",
]
