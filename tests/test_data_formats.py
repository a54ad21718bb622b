from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from bpfree.data import load_dataset, split_indices
from bpfree.data.formats import read_idx
from bpfree.errors import DataError

from conftest import idx_bytes, write_cifar10_archive, write_idx_dataset


def test_idx_round_trip_gz_and_plain(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)


def test_idx_wrong_magic_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*wrong magic"):
        read_idx(bad)


def test_idx_truncated_names_file_and_sizes(tmp_path: Path) -> None:
    raw = idx_bytes(np.zeros((5, 28, 28), np.uint8))
    bad = tmp_path / "t.gz"
    bad.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match=r"t\.gz: wrong length"):
        read_idx(bad)


def test_corrupt_gzip_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.gz"
    bad.write_bytes(gzip.compress(b"hello world" * 100)[:30])
    with pytest.raises(DataError, match=r"x\.gz"):
        read_idx(bad)


def test_label_count_mismatch(tmp_path: Path, no_env_data: Path) -> None:
    folder = write_idx_dataset(tmp_path / "d" / "mnist")
    labels = np.zeros(7, np.uint8)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DataError, match=r"200 images but .* 7 labels"):
        load_dataset("mnist", data_dir=tmp_path / "d")


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_and_fashion_mnist_files_are_told_apart_by_their_test_labels(
    tmp_path: Path, no_env_data: Path, gz: bool
) -> None:
    """The two share file names: a folder of one is never read as the other (their canonical
    test sets differ in labels per class: Fashion-MNIST 1000 each, MNIST uneven)."""
    from bpfree.data.catalog import DATASETS, locate, missing_message

    folder = write_idx_dataset(tmp_path / "fm", n_train=20, n_test=10, gz=gz)
    labels = np.repeat(np.arange(10, dtype=np.uint8), 1000)  # Fashion-MNIST's test labels
    name = "t10k-labels-idx1-ubyte" + (".gz" if gz else "")
    raw = idx_bytes(labels)
    (folder / name).write_bytes(gzip.compress(raw) if gz else raw)
    fashion, mnist = DATASETS.get("fashion_mnist"), DATASETS.get("mnist")
    assert locate(fashion, folder)[0] == folder
    where, looked = locate(mnist, folder)
    assert where is None
    assert f"{folder} holds fashion_mnist's files, not mnist's" in missing_message(mnist, looked)
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # MNIST's test labels
    raw = idx_bytes(np.repeat(np.arange(10, dtype=np.uint8), counts))
    (folder / name).write_bytes(gzip.compress(raw) if gz else raw)
    assert locate(mnist, folder)[0] == folder and locate(fashion, folder)[0] is None
    # any other labels (a user's own copy or subset) belong to neither: both may read them
    write_idx_dataset(folder, n_train=20, n_test=10, gz=gz)
    assert locate(mnist, folder)[0] == folder == locate(fashion, folder)[0]


def test_split_is_fixed_and_independent_of_run_seed() -> None:
    a_tr, a_va = split_indices(1000, 0.1, data_seed=0)
    _, b_va = split_indices(1000, 0.1, data_seed=0)
    assert np.array_equal(a_va, b_va) and len(a_va) == 100 and len(a_tr) == 900
    assert not set(a_tr) & set(a_va)
    _, c_va = split_indices(1000, 0.1, data_seed=1)
    assert not np.array_equal(a_va, c_va)


def test_load_idx_dataset_normalised_with_split(tmp_path: Path, no_env_data: Path) -> None:
    write_idx_dataset(tmp_path / "d" / "fashion-mnist", n_train=200, n_test=50, gz=False)
    data = load_dataset("fashion_mnist", data_dir=tmp_path / "d", train_samples=100)
    assert data.train_x.shape == (90, 1, 28, 28) and data.val_x.shape == (10, 1, 28, 28)
    assert data.test_x.shape == (50, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.long
    # uniform random pixels have mean 0.5 on the [0, 1] scale: (0.5 - 0.286) / 0.353 ~ 0.61
    assert abs(float(data.train_x.mean()) - (0.5 - 0.2860) / 0.3530) < 0.05
    assert data.info["n_train"] == 90 and data.info["source"].endswith("fashion-mnist")


def test_cifar10_read_from_archive(tmp_path: Path, no_env_data: Path) -> None:
    write_cifar10_archive(tmp_path / "d" / "cifar10" / "cifar-10-python.tar.gz", n=20)
    data = load_dataset("cifar10", data_dir=tmp_path / "d")
    assert data.train_x.shape == (90, 3, 32, 32) and data.val_x.shape == (10, 3, 32, 32)
    assert data.test_x.shape == (20, 3, 32, 32)


def test_cifar_corrupt_archive(tmp_path: Path, no_env_data: Path) -> None:
    path = tmp_path / "d" / "cifar-10-python.tar.gz"
    write_cifar10_archive(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", data_dir=tmp_path / "d")


def test_cifar_unpickler_refuses_code(tmp_path: Path) -> None:
    import io
    import os
    import pickle
    import tarfile

    payload = pickle.dumps(os.system)  # a pickle that would import a callable
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_digits_bundled() -> None:
    data = load_dataset("digits")
    assert data.train_x.shape == (1350, 1, 8, 8) and data.test_x.shape == (297, 1, 8, 8)
    assert int(data.train_y.max()) == 9


def test_missing_dataset_says_where_and_how(no_env_data: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert "bpfree data fetch mnist" in msg and str(no_env_data / "cache" / "bpfree") in msg


def test_bpfree_data_env_var(tmp_path: Path, no_env_data: Path, monkeypatch) -> None:
    write_idx_dataset(tmp_path / "envdata" / "mnist", n_train=30, n_test=10)
    monkeypatch.setenv("BPFREE_DATA", str(tmp_path / "envdata"))
    assert load_dataset("mnist").info["n_test"] == 10
