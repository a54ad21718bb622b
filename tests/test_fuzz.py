"""Hundreds of user mistakes, in-process, through every subcommand and every kind of run file.

Each must end with exit code 2 and exactly one line on stderr, never a traceback. The cases are
generated: every option of every subcommand crossed with values that are wrong for it, then
hand-corrupted files of each kind bpfree reads back (run files, comparison files, settings,
sweep storage, dataset files in each format). The valid rest of each command line is a tiny
budget, so a mistake that is accepted by accident finishes quickly and fails the test.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from bpfree.cli import main
from bpfree.engine import Trainer

from conftest import cifar_batch, idx_bytes, write_cifar10_archive, write_idx_dataset

LONG = "x" * 5000
FRESH = "@FRESH@"  # replaced by a new folder for each case: no case sees another's output
TINY = ["--epochs", "2", "--train-samples", "64", "--quiet"]

# Values wrong for every option of their kind.
BAD_COUNT = ["0", "-1", "1.5", "abc", "", " ", "nan", "inf", "1e3", "0x10", LONG, "--"]
BAD_NONNEG = ["-1", "1.5", "abc", "", "nan", LONG]
BAD_POSITIVE_FLOAT = ["0", "-1", "nan", "inf", "-inf", "abc", "", LONG]
BAD_NAME = ["xx", "", " ", "MF?", "../etc", "mf,ff", "mlp_2x", "\u00e9\u00e8", LONG]
BAD_DEVICE = ["gpu", "", "cuda:x", "tpu", "CPU!", LONG]
BAD_SETS = [
    "lr",
    "=1",
    "lr=",
    "lr=nan",
    "lr=inf",
    "lr=-1",
    "lr=abc",
    "lr=1e999",
    "nokey=1",
    "batch_size=0",
    "batch_size=1.5",
    "batch_size=-3",
    "patience=-1",
    "schedule=sequentail",
    "ff.lr=1",
    "xx.lr=1",
    "mf.nokey=1",
    ".lr=1",
    "mf.=1",
    f"{LONG}=1",
    f"lr={LONG}",
]


def _with(base: list[str], flag: str, value: str) -> list[str]:
    """``base`` with ``flag`` set to ``value`` (replaced when present, else appended)."""
    argv = list(base)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
        return argv
    return [*argv, flag, value]


def _flag_cases(tmp: Path) -> list[list[str]]:
    a_file = tmp / "a_file"
    a_file.write_text("not a folder\n")
    train = ["train", "--rule", "mf", "--dataset", "digits", *TINY, "--out", FRESH]
    compare = [
        "compare",
        "--rules",
        "mf",
        "--dataset",
        "digits",
        "--seeds",
        "1",
        *TINY,
        "--no-report",
        "--out",
        FRESH,
    ]
    storage = f"sqlite:///{FRESH}.db"
    sweep = [
        "sweep",
        "--study",
        "s",
        "--storage",
        storage,
        "--rule",
        "mf",
        "--dataset",
        "digits",
        "--trials",
        "1",
        *TINY,
    ]
    bad_paths = [str(a_file), str(a_file / "x"), ""]
    bad_storage = [
        "mysql://u@h/db",
        "postgresql://",
        "sqlite://",
        "sqlite:///" + str(a_file / "x.db"),
        "sqlite:///" + str(tmp),
        "http://localhost/x",
        "://",
        LONG,
    ]
    options: dict[str, dict[str, list[str]]] = {
        "train": {
            "--rule": BAD_NAME,
            "--model": BAD_NAME,
            "--dataset": BAD_NAME,
            "--epochs": BAD_COUNT,
            "--patience": BAD_NONNEG,
            "--train-samples": BAD_COUNT,
            "--seed": BAD_NONNEG,
            "--budget-flops": BAD_POSITIVE_FLOAT,
            "--budget-seconds": BAD_POSITIVE_FLOAT,
            "--grid-intensity": ["-1", "nan", "inf", "abc", ""],
            "--country": ["XX", "", "123", LONG],
            "--device": BAD_DEVICE,
            "--out": bad_paths,
            "--config": [str(tmp / "missing.toml"), str(tmp), str(a_file / "x"), ""],
            "--data-dir": [str(a_file)],
            "--set": BAD_SETS,
            "--stages": BAD_COUNT,
            "--replicas": BAD_COUNT,
            "--micro-batches": BAD_COUNT,
            "--pipeline-schedule": ["1F1B", "interleaved", "", LONG],
        },
        "compare": {
            "--rules": [
                *(n for n in BAD_NAME if n != "mf,ff"),
                ",",
                "mf,,ff",
                "mf:",
                "mf:lr",
                "mf:lr=abc",
                "mf:nokey=1",
                "cafo:blocks=xyz",
                "mf,mf",
                "bp",
            ],
            "--dataset": BAD_NAME,
            "--seeds": ["a", ",", "1.5", "-1", "0", "", "1,,2", "0,0", "a,b", LONG],
            "--epochs": BAD_COUNT,
            "--train-samples": BAD_COUNT,
            "--model": ["mf", "=x", "mf=xx", "xx=mlp_2x8", "mf=cnn_3block", "mf=", LONG],
            "--budget-flops": BAD_POSITIVE_FLOAT,
            "--budget-seconds": BAD_POSITIVE_FLOAT,
            "--twin": ["both", "", LONG],
            "--lr-grid": ["a", "0", "-1", "nan", ",", "", "1e-3,,1e-2", "inf", LONG],
            "--device": BAD_DEVICE,
            "--out": bad_paths,
            "--data-dir": [str(a_file)],
            "--tune": ["0", "-1", "abc", "1.5", ""],
            "--tune-epochs": ["0", "-1", "abc", ""],
            "--tune-train-samples": ["0", "-1", "abc", ""],
            "--storage": bad_storage,
            "--set": BAD_SETS,
        },
        "sweep": {
            "--study": ["", LONG],
            "--storage": bad_storage,
            "--rule": BAD_NAME,
            "--model": BAD_NAME,
            "--dataset": BAD_NAME,
            "--trials": BAD_COUNT,
            "--epochs": BAD_COUNT,
            "--patience": BAD_NONNEG,
            "--seed": BAD_NONNEG,
            "--train-samples": BAD_COUNT,
            "--device": BAD_DEVICE,
            "--sampler-seed": ["abc", "1.5", ""],
            "--pruner": ["hyperband", "", LONG],
            "--max-failed": ["-1", "abc", "1.5"],
            "--heartbeat-interval": BAD_POSITIVE_FLOAT,
            "--grace-period": BAD_POSITIVE_FLOAT,
            "--max-trials": ["-1", "abc", "1.5"],
            "--config": [str(tmp / "missing.toml"), str(tmp)],
            "--data-dir": [str(a_file)],
            "--export": [str(a_file / "x.toml"), str(tmp), ""],
            "--set": BAD_SETS,
        },
    }
    bases = {"train": train, "compare": compare, "sweep": sweep}
    cases = [
        _with(bases[cmd], flag, value)
        for cmd, flags in options.items()
        for flag, values in flags.items()
        for value in values
    ]
    tuned = _with(compare, "--tune", "1")
    cases += [_with(tuned, "--tune-epochs", v) for v in ["0", "-1", "abc", "1.5"]]
    cases += [_with(tuned, "--tune-train-samples", v) for v in ["0", "1", "-1", "abc"]]
    cases += [["list", name] for name in BAD_NAME if name.strip()]
    cases += [["worker", "--study", "nope", "--storage", url] for url in bad_storage]
    cases += [["worker", "--study", "missing", "--storage", storage]]
    cases += [["env", "--device", d] for d in BAD_DEVICE]
    cases += [["data", "fetch", name] for name in BAD_NAME]
    fetch = ["data", "fetch", "digits", "--data-dir", str(tmp / "dl")]
    cases += [_with(fetch, "--timeout", v) for v in BAD_POSITIVE_FLOAT]
    cases += [_with(fetch, "--deadline", v) for v in BAD_POSITIVE_FLOAT]
    cases += [
        ["data", "fetch", "mnist", "--data-dir", str(tmp / "dl"), "--mirror", url, "--timeout", "2"]
        for url in ["ftp://x/", "not a url", "http://", "http://127.0.0.1:9/", "", LONG]
    ]
    cases += [["data", "fetch", "mnist", "--data-dir", str(a_file)]]
    cases += [["data", "list", "--data-dir", str(a_file)]]
    cases += [["report", p] for p in [str(tmp / "missing"), str(a_file), str(tmp / "empty"), ""]]
    cases += [
        ["train"],
        ["train", "--rule", "mf"],
        ["train", "--dataset", "digits"],
        ["compare"],
        ["compare", "--rules", "mf", "--dataset", "digits"],
        ["sweep", "--study", "s"],
        ["report"],
        ["data"],
        ["nope"],
        ["--nope"],
        [LONG],
        ["train", "--rule", "mf", "--dataset", "digits", "--out", str(tmp / "n"), "--resume"],
        ["train", "--rule", "mf", "--dataset", "digits", "--unknown-flag"],
        ["compare", "--rules", "mf", "--dataset", "digits", "--out", str(tmp / "c"), "extra"],
    ]
    (tmp / "empty").mkdir(exist_ok=True)
    return cases


# -- corrupt files ---------------------------------------------------------------------------


class _Plant:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _bad_bytes(marker: Path) -> dict[str, bytes]:
    return {
        "empty": b"",
        "garbage": b"\x00\xffnot this format\n" * 10,
        "text": b"hello\n",
        "pickle": pickle.dumps(_Plant(marker)),
        "json-list": b"[1, 2, 3]\n",
        "json-half": b'{"status": "compl',
        "json-wrong": b'{"status": 5, "metrics": "x", "config": []}\n',
        "utf16": "{}".encode("utf-16"),
        "zip": b"PK\x03\x04" + b"\x00" * 40,
    }


def _train_argv(out: Path) -> list[str]:
    return ["train", "--rule", "mf", "--dataset", "digits", *TINY, "--out", str(out)]


def _file_cases(tmp: Path, make_run: Callable[[Path], None]) -> list[tuple[str, list[str]]]:
    """(what, argv) for corrupt files; the files are written here."""
    marker = tmp / "code-ran"
    cases: list[tuple[str, list[str]]] = []
    for kind, raw in _bad_bytes(marker).items():
        # an interrupted run: its files corrupt, then --resume
        # (its result.json and config.json are rewritten, not read, by --resume)
        out = tmp / "resume" / kind
        make_run(out)
        (out / "checkpoint.pt").write_bytes(raw)
        cases.append((f"checkpoint.pt {kind}", [*_train_argv(out), "--resume"]))
        # a finished comparison: its files corrupt, then compare (rerun) and report
        for name in ["compare.json", "runs/{key}/result.json", "runs/{key}/checkpoint.pt"]:
            out = tmp / "cmp" / f"{name.replace('/', '_')}-{kind}"
            key = _comparison(out, make_run)
            (out / name.format(key=key)).write_bytes(raw)
            argv = ["compare", "--rules", "mf", "--dataset", "digits", "--seeds", "1", *TINY]
            cases.append((f"compare {name} {kind}", [*argv, "--no-report", "--out", str(out)]))
            if name == "compare.json":
                cases.append((f"report {name} {kind}", ["report", "--no-plots", str(out)]))
        # a settings file, a sweep storage file, an exported settings file
        cfg = tmp / "cfg" / f"{kind}.toml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_bytes(raw)
        if kind != "empty":  # an empty settings file is a valid (empty) one
            cases.append((f"config {kind}", [*_train_argv(tmp / "x"), "--config", str(cfg)]))
            sweep = ["sweep", "--study", "s", "--storage", f"sqlite:///{tmp / 'cfg.db'}"]
            cases.append((f"sweep config {kind}", [*sweep, "--config", str(cfg), *TINY]))
        db = tmp / "db" / f"{kind}.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        db.write_bytes(raw)
        if kind != "empty":  # an empty file is a valid new SQLite database
            cases.append(
                (f"storage {kind}", ["sweep", "--study", "s", "--status", "--storage", str(db)])
            )
    # a checkpoint that is readable data but not this run's state
    for what, change in [
        ("no rule state", lambda c: c.pop("rule")),
        ("no generator", lambda c: c.pop("batch_generator")),
        ("other shapes", lambda c: c["rule"].update(_reshaped(c["rule"]))),
        ("rule state a list", lambda c: c.update(rule=[1, 2])),
    ]:
        out = tmp / "resume" / what
        make_run(out)
        ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
        change(ckpt)
        torch.save(ckpt, out / "checkpoint.pt")
        cases.append((f"checkpoint.pt {what}", [*_train_argv(out), "--resume"]))
    for text, what in [
        ("patience = -1\n", "out of range"),
        ('seed = "ten"\n', "wrong type"),
        ("model = 5\n", "wrong type name"),
        ("nokey = 1\n", "unknown key"),
        ("[hparams]\nlr = -1\n", "bad hyperparameter"),
        ("[hparams]\nnokey = 1\n", "unknown hyperparameter"),
        ("[hparams]\nlr = nan\n", "nan"),
        ("epochs = 3\n", "duplicate key"),
        ("seed = 1.5\n", "float seed"),
        ("[[x]]\n", "array of tables"),
    ]:
        cfg = tmp / "cfg" / f"{what}.toml"
        cfg.write_text('rule = "mf"\ndataset = "digits"\nepochs = 2\ntrain_samples = 64\n' + text)
        out = str(tmp / "y")
        cases.append((f"config {what}", ["train", "--config", str(cfg), "--quiet", "--out", out]))
    return cases + _dataset_cases(tmp, marker)


def _reshaped(state: dict[str, object]) -> dict[str, object]:
    """The same keys, every tensor one row short (nested module states included)."""
    out: dict[str, object] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.ndim:
            out[key] = value[:-1].clone()
        elif isinstance(value, dict):
            out[key] = _reshaped(value)
        else:
            out[key] = value
    return out


def _comparison(out: Path, make_run: Callable[[Path], None]) -> str:
    """A finished one-run comparison in ``out``; returns the run's key."""
    argv = ["compare", "--rules", "mf", "--dataset", "digits", "--seeds", "1", *TINY]
    if not out.exists():
        template = out.parent / "_template"
        if not template.exists():
            assert main([*argv, "--no-report", "--out", str(template)]) == 0
        shutil.copytree(template, out)
    (key,) = [p.name for p in (out / "runs").iterdir() if p.name.startswith("mf")]
    return key


def _dataset_cases(tmp: Path, marker: Path) -> list[tuple[str, list[str]]]:
    """MNIST-format IDX files and CIFAR-10 archives, each broken one way."""
    cases = []
    rng = np.random.default_rng(0)

    def train_on(dataset: str, root: Path) -> list[str]:
        return [
            "train",
            "--rule",
            "mf",
            "--model",
            "mlp_2x8",
            "--dataset",
            dataset,
            "--data-dir",
            str(root),
            *TINY,
            "--out",
            str(tmp / "unused"),
        ]

    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 20, dtype=np.uint8)
    idx_breaks: dict[str, tuple[str, bytes]] = {
        "wrong magic": ("train-images-idx3-ubyte", b"\x01\x02\x08\x03" + idx_bytes(images)[4:]),
        "truncated": ("train-images-idx3-ubyte", idx_bytes(images)[:500]),
        "20x20 images": ("train-images-idx3-ubyte", idx_bytes(images[:, :20, :20])),
        "1-d images": ("train-images-idx3-ubyte", idx_bytes(images.reshape(-1))),
        "labels out of range": ("train-labels-idx1-ubyte", idx_bytes(labels + 200)),
        "labels 2-d": ("train-labels-idx1-ubyte", idx_bytes(labels.reshape(4, 5))),
        "label count": ("train-labels-idx1-ubyte", idx_bytes(labels[:7])),
        "test label count": ("t10k-labels-idx1-ubyte", idx_bytes(labels[:3])),
        "empty": ("train-images-idx3-ubyte", b""),
        "header only": ("train-images-idx3-ubyte", b"\x00\x00\x08\x03"),
        "float dtype": ("train-images-idx3-ubyte", b"\x00\x00\x0d\x03" + idx_bytes(images)[4:]),
        "huge dims": ("train-images-idx3-ubyte", b"\x00\x00\x08\x03" + b"\xff" * 12),
    }
    for dataset in ["mnist", "fashion_mnist"]:
        for what, (name, raw) in idx_breaks.items():
            for gz in (True, False):
                root = tmp / "idx" / dataset / f"{what}-{gz}"
                folder = write_idx_dataset(root / dataset, n_train=20, n_test=10, gz=gz)
                suffix = ".gz" if gz else ""
                (folder / f"{name}{suffix}").write_bytes(gzip.compress(raw) if gz else raw)
                cases.append((f"{dataset} {what} gz={gz}", train_on(dataset, root)))
        root = tmp / "idx" / dataset / "bad-gzip"
        folder = write_idx_dataset(root / dataset, n_train=20, n_test=10)
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
        cases.append((f"{dataset} corrupt gzip", train_on(dataset, root)))

    def cifar_with(member: str, raw: bytes | None, what: str) -> None:
        """The archive with ``member`` replaced by ``raw`` (left out when None)."""
        root = tmp / "cifar" / what
        archive = write_cifar10_archive(root / "cifar10" / "cifar-10-python.tar.gz", n=20)
        rebuilt = root / "rebuilt.tar.gz"
        with tarfile.open(archive) as src, tarfile.open(rebuilt, "w:gz") as dst:
            for info in src.getmembers():
                data = src.extractfile(info).read()  # type: ignore[union-attr]
                if info.name.endswith(member):
                    if raw is None:
                        continue
                    data = raw
                info.size = len(data)
                dst.addfile(info, io.BytesIO(data))
        rebuilt.replace(archive)
        cases.append((f"cifar10 {what}", train_on("cifar10", root)))

    def batch(**changes: object) -> bytes:
        good = pickle.loads(cifar_batch(20, "labels", 0))
        good.update({k.encode(): v for k, v in changes.items()})
        return pickle.dumps(good, protocol=2)

    cifar_with("data_batch_1", batch(labels=[99] * 20), "labels out of range")
    cifar_with("data_batch_1", batch(labels=[-1] * 20), "negative labels")
    cifar_with("data_batch_1", batch(labels=[0] * 3), "label count")
    cifar_with("data_batch_1", batch(labels="abc"), "labels not a list")
    cifar_with("data_batch_1", batch(data=np.zeros((20, 3072), np.float32)), "float pixels")
    cifar_with("data_batch_1", batch(data=np.full((20, 3072), 300, np.int32)), "pixels over 255")
    cifar_with("data_batch_1", batch(data=np.zeros((20, 100), np.uint8)), "wrong row size")
    cifar_with("data_batch_1", batch(data="abc"), "data not an array")
    cifar_with("data_batch_1", pickle.dumps([1, 2, 3]), "batch not a dict")
    cifar_with("data_batch_1", pickle.dumps(_Plant(marker)), "code in the pickle")
    cifar_with("data_batch_1", b"garbage", "batch not a pickle")
    cifar_with("test_batch", batch(labels=[10] * 20), "test labels out of range")
    cifar_with("data_batch_3", None, "a batch missing")
    cifar_with("test_batch", None, "the test batch missing")
    cifar_with("data_batch_2", batch(data=np.zeros((20, 3, 32, 32), np.uint8)), "4-d pixels")
    root = tmp / "cifar" / "not-a-tar"
    (root / "cifar10").mkdir(parents=True)
    (root / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"garbage")
    cases.append(("cifar10 not a tar", train_on("cifar10", root)))
    return cases


# -- the tests --------------------------------------------------------------------------------


PROGRESS = re.compile(r"^\[\d+/\d+\] |^ {8}")  # compare's per-run lines, before the error


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if not PROGRESS.match(line)]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    try:
        code: int | str | None = main(argv)
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # a traceback: recorded as a failure, the loop goes on
        capsys.readouterr()
        return f"uncaught {type(exc).__name__}", f"{exc}\n"
    return code, capsys.readouterr().err


def _short(argv: list[str]) -> str:
    return " ".join(a if len(a) < 40 else a[:20] + "..." for a in argv)


def test_every_user_mistake_is_exit_2_and_one_line(
    tmp_path: Path,
    no_env_data: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def make_run(out: Path) -> None:
        """An interrupted run in ``out``: stopped right after its first checkpoint."""
        template = tmp_path / "run-template"
        if not template.exists():
            original = Trainer._checkpoint

            def stop(self: Trainer, *args: object) -> None:
                original(self, *args)
                raise KeyboardInterrupt

            with monkeypatch.context() as m:
                m.setattr(Trainer, "_checkpoint", stop)
                assert main(_train_argv(template)) == 130
            assert (template / "checkpoint.pt").exists()
        shutil.copytree(template, out)

    cwd = tmp_path / "cwd"  # where a mistake that fell back to "." would write
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    flags = [("flag", argv) for argv in _flag_cases(tmp_path)]
    files = _file_cases(tmp_path, make_run)
    capsys.readouterr()
    cases = flags + files
    assert len({tuple(argv) for _, argv in cases}) >= 400
    failures = []
    for i, (what, argv) in enumerate(cases):
        fresh = str(tmp_path / "fresh" / str(i))
        argv = [a.replace(FRESH, fresh) for a in argv]
        code, err = _run(argv, capsys)
        lines = _error_lines(err)
        if code != 2 or len(lines) != 1 or "Traceback" in err or len(lines[0]) > 600:
            failures.append(f"{what}: {_short(argv)} -> exit {code}: {err[:300]!r}")
    assert not (tmp_path / "code-ran").exists(), "a planted pickle ran code"
    assert not list(cwd.iterdir()), "a mistake wrote into the current directory"
    assert not failures, f"{len(failures)} of {len(cases)}:\n" + "\n".join(failures)
