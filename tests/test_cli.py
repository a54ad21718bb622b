"""The command line: exit codes and one-line messages for mistakes, and a real interrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpfree.cli import main

from conftest import write_idx_dataset

BASE = ["train", "--model", "mlp_2x32", "--dataset", "digits", "--epochs", "2", "--quiet"]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (
            ["train", "--rule", "monoforward", "--model", "mlp_2x8", "--dataset", "digits"],
            "unknown rule 'monoforward'",
        ),
        (
            ["train", "--rule", "mf", "--model", "mlp_2by8", "--dataset", "digits"],
            "unknown model 'mlp_2by8'",
        ),
        (
            ["train", "--rule", "mf", "--model", "mlp_2x8", "--dataset", "fmnist"],
            "unknown dataset 'fmnist'",
        ),
        (
            [
                "train",
                "--rule",
                "mf",
                "--model",
                "mlp_2x8",
                "--dataset",
                "digits",
                "--set",
                "lr=-1",
            ],
            "lr must be > 0",
        ),
        (
            ["train", "--rule", "mf", "--model", "mlp_2x8", "--dataset", "digits", "--epochs", "0"],
            "epochs must be >= 1",
        ),
        (
            [
                "train",
                "--rule",
                "mf",
                "--model",
                "mlp_2x8",
                "--dataset",
                "digits",
                "--set",
                "schedule=sequentail",
            ],
            "did you mean: sequential",
        ),
        (
            ["train", "--rule", "mf", "--model", "cnn_3block", "--dataset", "digits"],
            "cannot train 'cnn_3block'",
        ),
        (
            ["train", "--rule", "mf", "--model", "mlp_2x8", "--dataset", "digits", "--set", "lr"],
            "--set expects key=value",
        ),
    ],
)
def test_user_mistakes_exit_2_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_unknown_rule_names_close_matches(capsys: pytest.CaptureFixture[str]) -> None:
    main(["train", "--rule", "bpp", "--model", "mlp_2x8", "--dataset", "digits"])
    assert "did you mean: bp" in capsys.readouterr().err


def test_missing_dataset_prints_the_fetch_command(
    no_env_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--rule", "mf", "--model", "mlp_2x8", "--dataset", "mnist"]) == 2
    err = capsys.readouterr().err
    assert "bpfree data fetch mnist" in err and "looked in" in err


def test_corrupt_file_is_named(tmp_path: Path, no_env_data: Path, capsys) -> None:
    folder = write_idx_dataset(tmp_path / "d" / "mnist")
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bgarbage")
    code = main(
        [
            "train",
            "--rule",
            "mf",
            "--model",
            "mlp_2x8",
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path / "d"),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2
    assert "t10k-images-idx3-ubyte.gz" in capsys.readouterr().err


def test_train_with_config_file_and_sets(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('rule = "mf"\nepochs = 5\n[hparams]\nlr = 0.002\n')
    out = tmp_path / "run"
    code = main(
        [
            *BASE,
            "--config",
            str(cfg),
            "--set",
            "weight_decay=0.001",
            "--set",
            "patience=2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and str(out) in printed
    config = json.loads((out / "config.json").read_text())
    # flags override the file (--epochs 2), --set reaches rule and trainer settings
    assert config["epochs"] == 2 and config["patience"] == 2
    assert config["hparams"]["lr"] == 0.002 and config["hparams"]["weight_decay"] == 0.001


def test_config_file_unknown_key(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('rule = "mf"\nepochz = 5\n')
    assert main([*BASE, "--config", str(cfg)]) == 2
    assert "unknown setting 'epochz' (did you mean: epochs?)" in capsys.readouterr().err


def test_list_shows_rule_properties(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "reverse_ad=none" in out or "reverse_ad=within_block" in out
    assert "mlp_<depth>x<width>" in out and "fashion_mnist" in out


def test_list_of_one_rule_shows_its_hyperparameters(capsys) -> None:
    assert main(["list", "ff"]) == 0
    out = capsys.readouterr().out
    assert "lr_cooldown" in out and "label_scale" in out
    assert "one of simultaneous, layerwise" in out
    assert main(["list", "fff"]) == 2
    assert "did you mean: ff" in capsys.readouterr().err


def test_data_list(no_env_data: Path, capsys) -> None:
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "bpfree data fetch mnist" in out


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def test_sigterm_leaves_a_resumable_run(tmp_path: Path) -> None:
    """A real process killed with SIGTERM mid-run; --resume then finishes the same run."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "bpfree",
        "train",
        "--rule",
        "mf",
        "--model",
        "mlp_2x256",
        "--dataset",
        "digits",
        "--epochs",
        "30",
        "--set",
        "patience=30",
        "--quiet",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(out / "checkpoint.pt", 60)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()
    assert b"--resume" in err
    partial = json.loads((out / "result.json").read_text())  # valid JSON, not half-written
    assert partial["status"] == "interrupted"
    done = partial["metrics"]["epochs_trained"]
    assert 0 < done < 30
    resumed = subprocess.run(
        [*cmd[:-2], "--out", str(out), "--resume"], env=env, capture_output=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    final = json.loads((out / "result.json").read_text())
    assert final["status"] == "completed" and final["metrics"]["epochs_trained"] == 30


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--rule", "MF", "--dataset", "digits"], "did you mean: mf?"),
        (["train", "--rule", "mf", "--dataset", "digits", "--epochs", "abc"], "invalid int"),
        (["compare", "--rules", "mf"], "required: --dataset, --out"),
        ([], "required: command"),
        (
            ["train", "--rule", "mf", "--dataset", "digits", "--set", "schedule=" + "x" * 5000],
            "chars)",
        ),
    ],
)
def test_argument_errors_and_long_values_are_one_short_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and len(err) < 600, err[:700]


def test_silent_successes_are_now_errors(tmp_path: Path, capsys) -> None:
    """What used to succeed silently: each is one line and exit code 2 now."""
    base = ["--dataset", "digits", "--quiet"]
    cases = [
        (["train", "--rule", "mf", *base, "--out", ""], "--out: is empty"),
        (["train", "--rule", "mf", *base, "--out", str(tmp_path / "x"), "--resume"], "nothing"),
        (["compare", "--rules", "mf", *base, "--out", str(tmp_path / "c"), "--tune", "0"], ">= 1"),
        (
            ["compare", "--rules", "mf", *base, "--out", str(tmp_path / "c"), "--model", "xx=y"],
            "'xx' is not among the compared rules",
        ),
        (
            ["compare", "--rules", "mf", *base, "--out", str(tmp_path / "c"), "--model", "mf="],
            "no model given",
        ),
        (["train", "--rule", "mf", *base, "--config", str(tmp_path)], "Is a directory"),
        (
            ["train", "--rule", "mf", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path)],
            "looked in",
        ),
    ]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exit_info:
            raise SystemExit(main(argv))
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, (argv, err)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "compare.json").write_text("{")
    assert main(["report", str(tmp_path / "r")]) == 2
    assert "compare.json is corrupt" in capsys.readouterr().err


def test_list_answers_from_its_cache_without_torch(tmp_path: Path) -> None:
    """The first `list` builds the answer (importing torch); the next ones read it back."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    code = (
        "import sys; from bpfree.cli import main; main(sys.argv[1:]); "
        "sys.stderr.write('torch' if 'torch' in sys.modules else 'no torch')"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
        for args in (["list"], ["list"], ["list", "fa"], ["list", "fa"])
    ]
    assert [r.stderr for r in runs] == ["torch", "no torch", "torch", "no torch"]
    assert runs[0].stdout == runs[1].stdout and "Datasets:" in runs[0].stdout
    assert runs[2].stdout == runs[3].stdout and "Hyperparameters" in runs[2].stdout


def test_the_cache_of_answers_follows_the_code(tmp_path: Path, monkeypatch) -> None:
    from bpfree import answers

    monkeypatch.delitem(sys.modules, "bpfree.rules", raising=False)  # as in a fresh process
    monkeypatch.setattr(answers, "PACKAGE", tmp_path / "pkg")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "pkg").mkdir()
    source = tmp_path / "pkg" / "rule.py"
    source.write_text("a = 1\n")
    assert answers.cached_answer("k", lambda: "one") == "one"
    assert answers.cached_answer("k", lambda: "two") == "one"  # same code: the kept answer
    source.write_text("a = 22\n")  # an edit (another size): computed afresh
    assert answers.cached_answer("k", lambda: "three") == "three"
    assert len(list((tmp_path / "cache" / "bpfree" / "answers").glob("*.txt"))) == 1
