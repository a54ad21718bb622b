"""Readers for the standard file formats: IDX (MNIST family) and CIFAR python pickles.

Every reader checks what it reads (magic number, declared sizes against actual length) and
raises :class:`DataError` naming the file and the problem, never a bare numpy or pickle error.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import typing
import zlib
from pathlib import Path

import numpy as np

from bpfree.errors import DataError

# IDX type codes (third byte of the magic number) -> numpy dtype; the data is big-endian.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return raw


def read_idx(path: Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array of its declared shape."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (wrong magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path}: wrong length: header declares shape {shape} ({expected} bytes), "
            f"file has {len(data)} bytes (truncated or corrupt)"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def read_idx_set(
    files: dict[str, Path], name: str, hw: tuple[int, ...], num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An IDX dataset's four files (train/test images/labels) as (train_x uint8 NCHW,
    train_y, test_x, test_y), checked against the dataset's image size and classes."""
    arrays = {
        key: read_idx(path, expected_ndim=3 if key.endswith("images") else 1)
        for key, path in files.items()
    }
    for part in ("train", "test"):
        x, y = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if x.shape[1:] != tuple(hw) or x.dtype != np.uint8:
            raise DataError(
                f"{files[part + '_images']}: {x.dtype} images of {x.shape[1:]} pixels; "
                f"{name} has uint8 images of {tuple(hw)} pixels"
            )
        if y.dtype.kind not in "ui":
            raise DataError(f"{files[part + '_labels']}: labels are not integers")
        if len(x) != len(y):
            raise DataError(
                f"{files[part + '_images']}: {len(x)} images but "
                f"{files[part + '_labels']} has {len(y)} labels"
            )
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{files[part + '_labels']}: labels outside 0..{num_classes - 1}")
    return (
        arrays["train_images"][:, None].astype(np.uint8),
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][:, None].astype(np.uint8),
        arrays["test_labels"].astype(np.int64),
    )


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches contain: builtins and plain numpy arrays."""

    _ALLOWED: typing.ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles spell bytes; harmless
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def load_cifar_batch(raw: bytes, where: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR python batch into images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # pickle raises many types on corrupt input
        raise DataError(f"{where}: not a readable CIFAR python batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{where}: CIFAR batch is not a dictionary")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{where}: CIFAR batch lacks 'data' or {label_key!r}")
    data, labels = np.asarray(batch["data"]), np.asarray(batch[label_key])
    if data.dtype.kind not in "ui" or (data.size and (data.min() < 0 or data.max() > 255)):
        raise DataError(f"{where}: CIFAR pixels must be integers 0..255, got {data.dtype} values")
    if labels.dtype.kind not in "ui" or labels.ndim != 1:
        raise DataError(f"{where}: CIFAR labels must be a list of integers")
    data, labels = data.astype(np.uint8), labels.astype(np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{where}: CIFAR batch has shape {data.shape} for {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


class CifarArchive:
    """Reads CIFAR batch files from an extracted folder or straight from the .tar.gz archive."""

    def __init__(self, path: Path, folder: str) -> None:
        self.path = path
        self.folder = folder  # e.g. "cifar-10-batches-py"
        self._members: dict[str, bytes] | None = None

    def read(self, name: str) -> bytes:
        if self.path.is_dir():
            return _read_bytes(self.path / name)
        if self._members is None:
            try:
                with tarfile.open(self.path, "r:gz") as tar:
                    self._members = {
                        Path(m.name).name: tar.extractfile(m).read()  # type: ignore[union-attr]
                        for m in tar.getmembers()
                        if m.isfile() and Path(m.name).parent.name == self.folder
                    }
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{self.path}: corrupt or truncated archive ({exc})") from exc
        if name not in self._members:
            raise DataError(f"{self.path}: archive has no {self.folder}/{name}")
        return self._members[name]
