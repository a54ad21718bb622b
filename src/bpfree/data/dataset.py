"""In-memory datasets with a fixed validation split, normalised, held on the training device."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bpfree.data.catalog import DATASETS, DatasetSpec, read_raw
from bpfree.errors import ConfigError


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
        return self.spec.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
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
) -> DataBundle:
    """Load ``name``, carve the validation split, normalise, and move it to ``device``.

    ``train_samples`` keeps only the first N examples of the official training set (before the
    validation split is carved from them), for quick runs and tests.
    """
    spec = DATASETS.get(name)
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    (train_x, train_y, test_x, test_y), source = read_raw(spec, data_dir)
    if train_samples is not None:
        if train_samples < 2:
            raise ConfigError(f"train_samples must be at least 2, got {train_samples}")
        train_x, train_y = train_x[:train_samples], train_y[:train_samples]
    tr, va = split_indices(len(train_x), val_fraction, data_seed)
    if len(va) == 0 or len(tr) == 0:
        raise ConfigError(
            f"{len(train_x)} training examples leave an empty split at val_fraction={val_fraction}"
        )
    dev = torch.device(device)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y)).to(device=dev, dtype=torch.long)

    return DataBundle(
        spec=spec,
        train_x=_normalise(train_x[tr], spec, dev),
        train_y=labels(train_y[tr]),
        val_x=_normalise(train_x[va], spec, dev),
        val_y=labels(train_y[va]),
        test_x=_normalise(test_x, spec, dev),
        test_y=labels(test_y),
        info={
            "dataset": spec.name,
            "source": portable(source),
            "n_train": len(tr),
            "n_val": len(va),
            "n_test": len(test_y),
            "val_fraction": val_fraction,
            "data_seed": data_seed,
            "train_samples": train_samples,
            "normalisation": {"mean": list(spec.mean), "std": list(spec.std)},
        },
    )


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
