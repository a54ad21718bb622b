from __future__ import annotations

import pytest
import torch

from bpfree.data import DATASETS, locate
from bpfree.errors import ConfigError
from bpfree.models import create_model
from bpfree.registry import Registry


def test_mlp_any_depth_and_width() -> None:
    net = create_model("mlp_3x17", (1, 28, 28))
    assert len(net.blocks) == 3 and net.block_dims == [17, 17, 17]
    assert net(torch.zeros(5, 1, 28, 28)).shape == (5, 17)
    assert sum(p.numel() for p in net.parameters()) == 784 * 17 + 17 + 2 * (17 * 17 + 17)


def test_cnn_3block_shapes() -> None:
    net = create_model("cnn_3block", (1, 28, 28))
    assert net.block_dims == [32 * 14 * 14, 128 * 7 * 7, 512 * 3 * 3]
    h = torch.zeros(2, 1, 28, 28)
    for block, dim in zip(net.blocks, net.block_dims, strict=True):
        h = block(h)
        assert h.flatten(1).shape[1] == dim
    assert create_model("cnn_3block", (3, 32, 32)).block_dims[-1] == 512 * 4 * 4


def test_bad_model_names() -> None:
    with pytest.raises(ConfigError, match="unknown model 'cnn3'"):
        create_model("cnn3", (1, 28, 28))
    with pytest.raises(ConfigError, match="depth must be"):
        create_model("mlp_0x10", (1, 28, 28))


def test_registry_rejects_duplicates_and_suggests() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("alpha", 1)
    with pytest.raises(ValueError, match="duplicate"):
        reg.register("alpha", 2)
    with pytest.raises(ConfigError, match="did you mean: alpha"):
        reg.get("alpah")


def test_real_fashion_mnist_when_installed() -> None:
    """The real files (Debian's dataset-fashion-mnist, installed by .ci/run) load fully."""
    spec = DATASETS.get("fashion_mnist")
    if locate(spec)[0] is None:
        pytest.skip("Fashion-MNIST not installed here (apt-get install dataset-fashion-mnist)")
    from bpfree.data import load_dataset

    data = load_dataset("fashion_mnist")
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (54000, 6000, 10000)
    assert torch.bincount(data.test_y).tolist() == [1000] * 10
    assert abs(float(data.train_x.mean())) < 0.05 and abs(float(data.train_x.std()) - 1) < 0.05
