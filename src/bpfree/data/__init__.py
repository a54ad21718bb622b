"""Datasets: file formats, locating and fetching files, fixed splits, in-memory tensors."""

from bpfree.data.catalog import DATASETS, DatasetSpec, locate, search_roots
from bpfree.data.dataset import DataBundle, load_dataset, split_indices
from bpfree.data.fetch import fetch

__all__ = [
    "DATASETS",
    "DataBundle",
    "DatasetSpec",
    "fetch",
    "load_dataset",
    "locate",
    "search_roots",
    "split_indices",
]
