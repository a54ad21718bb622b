"""In-memory datasets with a fixed validation split, normalised, held on the training device."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bpfree.data.catalog import DATASETS, DatasetSpec, locate, missing_message, read_raw
from bpfree.data.text import TextCorpus, read_spam_assassin, read_textfile, tokenize
from bpfree.errors import ConfigError, DataError


@dataclass
class DataBundle:
    """Train / validation / test tensors of one dataset, ready for training.

    Images are float32 (N, C, H, W), normalised per channel; labels int64 (N,). The validation
    split is drawn from ``data_seed`` only, so every run seed sees the same validation set.
    """

    spec: DatasetSpec
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.info.get("num_classes", self.spec.num_classes))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of an image; (2, L, 1) for text: token ids and attention mask."""
        if self.spec.is_text:
            return (2, int(self.train_x.shape[-1]), 1)
        return self.spec.input_shape


def split_indices(n: int, val_fraction: float, data_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed (train, val) index split of ``range(n)`` that depends only on ``data_seed``."""
    n_val = round(n * val_fraction)
    perm = np.random.default_rng(data_seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _normalise(x: np.ndarray, spec: DatasetSpec, device: torch.device) -> torch.Tensor:
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=torch.float32)
    return (t / 255.0 - mean) / std


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    data_seed: int = 0,
    train_samples: int | None = None,
    device: str | torch.device = "cpu",
    k_shot: int | None = None,
    k_shot_seed: int = 0,
    tokenizer: Any = None,
    max_length: int = 128,
) -> DataBundle:
    """Load ``name``, carve the validation split, normalise, and move it to ``device``.

    ``train_samples`` keeps only the first N examples of the official training set (before the
    validation split is carved from them), for quick runs and tests. ``k_shot`` keeps K
    examples per class of the training split (after the validation split), drawn from
    ``k_shot_seed`` (the run seed), as MeZO's k-shot tasks do. A text dataset needs the
    ``tokenizer`` of the model that reads it; texts are truncated to ``max_length`` tokens.
    """
    spec = DATASETS.get(name)
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if spec.is_text:
        return _load_text(
            spec, data_dir, val_fraction, data_seed, train_samples, torch.device(device),
            k_shot, k_shot_seed, tokenizer, max_length,
        )  # fmt: skip
    (train_x, train_y, test_x, test_y), source = read_raw(spec, data_dir)
    keep = _first(train_samples, len(train_y))
    train_x, train_y = train_x[:keep], train_y[:keep]
    tr, va = _splits(train_y, val_fraction, data_seed, k_shot, k_shot_seed)
    dev = torch.device(device)

    return DataBundle(
        spec=spec,
        train_x=_normalise(train_x[tr], spec, dev),
        train_y=_labels(train_y[tr], dev),
        val_x=_normalise(train_x[va], spec, dev),
        val_y=_labels(train_y[va], dev),
        test_x=_normalise(test_x, spec, dev),
        test_y=_labels(test_y, dev),
        info={
            "dataset": spec.name,
            "source": portable(source),
            "n_train": len(tr),
            "n_val": len(va),
            "n_test": len(test_y),
            "val_fraction": val_fraction,
            "data_seed": data_seed,
            "train_samples": train_samples,
            **({"k_shot": k_shot, "k_shot_seed": k_shot_seed} if k_shot is not None else {}),
            "normalisation": {"mean": list(spec.mean), "std": list(spec.std)},
        },
    )


def _labels(y: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(y)).to(device=dev, dtype=torch.long)


def _first(train_samples: int | None, n: int) -> int:
    """How many of the official training examples to keep (``train_samples``, else all)."""
    if train_samples is not None and train_samples < 2:
        raise ConfigError(f"train_samples must be at least 2, got {train_samples}")
    return n if train_samples is None else min(train_samples, n)


def _splits(
    labels: np.ndarray, val_fraction: float, data_seed: int, k_shot: int | None, k_shot_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions: the data seed's split, then the k-shot draw if any."""
    tr, va = split_indices(len(labels), val_fraction, data_seed)
    if len(va) == 0 or len(tr) == 0:
        raise ConfigError(
            f"{len(labels)} training examples leave an empty split at val_fraction={val_fraction}"
        )
    if k_shot is not None:
        tr = k_shot_indices(labels, tr, k_shot, k_shot_seed)
    return tr, va


def k_shot_indices(labels: np.ndarray, pool: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` positions per class drawn (without replacement, from ``seed``) among ``pool``, the
    training split's positions; sorted. ConfigError when a class has fewer than ``k``."""
    if k < 1:
        raise ConfigError(f"k_shot must be >= 1, got {k}")
    rng = np.random.default_rng([seed, 512])
    chosen = []
    for c in np.unique(labels[pool]):
        members = pool[labels[pool] == c]
        if len(members) < k:
            raise ConfigError(
                f"k_shot={k}: class {int(c)} has only {len(members)} training examples"
            )
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def _load_text(
    spec: DatasetSpec,
    data_dir: str | Path | None,
    val_fraction: float,
    data_seed: int,
    train_samples: int | None,
    dev: torch.device,
    k_shot: int | None,
    k_shot_seed: int,
    tokenizer: Any,
    max_length: int,
) -> DataBundle:
    """A text dataset: the corpus's splits, tokenised to one length L (the longest example
    after truncation to ``max_length``), as (N, 2, L) int64 tensors on ``dev``."""
    if tokenizer is None:
        raise ConfigError(f"dataset {spec.name!r} is text: it needs a text model (--model)")
    if max_length < 2:
        raise ConfigError(f"max_length must be >= 2 tokens, got {max_length}")
    corpus = read_text(spec, data_dir, data_seed)
    keep = _first(train_samples, len(corpus.train_labels))
    texts, y = corpus.train_texts[:keep], corpus.train_labels[:keep]
    tr, va = _splits(y, val_fraction, data_seed, k_shot, k_shot_seed)
    used = [texts[i] for i in tr] + [texts[i] for i in va] + corpus.test_texts
    tokens = tokenize(tokenizer, used, max_length)
    length = max(int(tokens[:, 1].sum(axis=1).max()), 2)
    truncated = int((tokens[:, 1].sum(axis=1) == max_length).sum())
    tokens = torch.from_numpy(np.ascontiguousarray(tokens[:, :, :length])).to(dev)
    n_tr, n_va = len(tr), len(va)

    return DataBundle(
        spec=spec,
        train_x=tokens[:n_tr],
        train_y=_labels(y[tr], dev),
        val_x=tokens[n_tr : n_tr + n_va],
        val_y=_labels(y[va], dev),
        test_x=tokens[n_tr + n_va :],
        test_y=_labels(corpus.test_labels, dev),
        info={
            "dataset": spec.name,
            "source": portable(corpus.source),
            "n_train": n_tr,
            "n_val": n_va,
            "n_test": len(corpus.test_labels),
            "val_fraction": val_fraction,
            "data_seed": data_seed,
            "train_samples": train_samples,
            **({"k_shot": k_shot, "k_shot_seed": k_shot_seed} if k_shot is not None else {}),
            "num_classes": len(corpus.classes),
            "classes": list(corpus.classes),
            "max_length": max_length,
            "sequence_length": length,
            "truncated_examples": truncated,
            "tokenizer": type(tokenizer).__name__,
            **corpus.info,
        },
    )


def read_text(spec: DatasetSpec, data_dir: str | Path | None, data_seed: int) -> TextCorpus:
    """The raw texts of a text dataset, with its test split (drawn from ``data_seed`` where the
    corpus has none)."""
    where, looked = locate(spec, data_dir)
    if where is None:
        raise DataError(missing_message(spec, looked))
    if spec.format == "textfile":
        return read_textfile(where)
    return read_spam_assassin(where, data_seed)


def portable(source: str) -> str:
    """A file location as stored in results: relative to the working directory or to the home
    directory (``~/...``) where it lies under one, so a result holds no local absolute path
    of its machine; other locations (``/usr/share/datasets``, a system path) as they are."""
    path = Path(source)
    if not path.is_absolute():
        return source
    for base, shown in ((Path.cwd(), "."), (Path.home(), "~")):
        try:
            return str(Path(shown) / path.relative_to(base))
        except ValueError:
            continue
    return source
