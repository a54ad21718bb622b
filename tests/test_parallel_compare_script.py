"""benchmarks/parallel_compare.sh: one comparison, several processes, one archive back.

The script a lent GPU machine runs in one call (docs/device.md); tiny here: digits, 2x16 MLPs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna", reason="the processes share runs through the 'sweep' extra")
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "parallel_compare.sh"
ARGS = ["--rules", "mf", "--model", "mf=mlp_2x16", "--dataset", "digits", "--device", "cpu"]


def _run(out: Path, deadline: int, epochs: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(SCRIPT), str(out), "tiny", "2", str(deadline), *ARGS]
    cmd += ["--seeds", "2", "--epochs", str(epochs), "--set", f"patience={epochs}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_share_the_runs_and_one_archive_holds_them(tmp_path: Path) -> None:
    done = _run(tmp_path, 400, 2)
    assert done.returncode == 0, done.stderr
    assert "4 of 4 runs finished" in done.stderr
    trained = [
        line
        for log in tmp_path.glob("tiny-w*.log")
        for line in log.read_text().splitlines()
        if ": training (ticket" in line
    ]
    assert len(trained) == 4  # each run trained once, by one of the two processes
    with tarfile.open(tmp_path / "tiny.tar.gz") as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("tiny/compare.json").read())  # type: ignore[union-attr]
    assert sum(n.endswith("/result.json") for n in names) == 4
    assert "tiny/report/table.md" in names and not any(n.endswith(".pt") for n in names)
    assert "tiny.db" in names  # the storage: another machine can continue from it
    assert manifest["shared"]["storage"] == "sqlite:///tiny.db"  # no local folder in results


def test_the_deadline_stops_the_processes_and_what_finished_is_still_packed(
    tmp_path: Path,
) -> None:
    done = _run(tmp_path, 30, 5000)  # minutes of training each: none ends in 30 s
    assert done.returncode == 0, done.stderr
    assert "0 of 4 runs finished" in done.stderr
    log = (tmp_path / "tiny-w0.log").read_text()
    assert "comparison interrupted; run the same command again to continue it" in log
    assert (tmp_path / "tiny.tar.gz").exists()


def test_sigterm_to_the_script_stops_the_processes_and_still_collects(tmp_path: Path) -> None:
    env = {**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(SCRIPT), str(tmp_path), "tiny", "2", "600", *ARGS]
    cmd += ["--seeds", "2", "--epochs", "5000", "--set", "patience=5000"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [tmp_path / f"tiny-w{i}.log" for i in range(2)]
    deadline = time.monotonic() + 300
    while not all(p.exists() and ": training (ticket" in p.read_text() for p in logs):
        assert proc.poll() is None and time.monotonic() < deadline, "no process started a run"
        time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # a session or a job scheduler ending the script
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 120  # not the 600 s deadline
    assert "0 of 4 runs finished" in err
    assert "comparison interrupted" in logs[0].read_text()
    assert (tmp_path / "tiny.tar.gz").exists() and (tmp_path / "tiny" / "compare.json").exists()


def test_bad_arguments_print_the_usage() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "out"], capture_output=True, text=True)
    assert done.returncode == 2 and "WORKERS" in done.stderr
    bad = subprocess.run(["bash", str(SCRIPT), "o", "n", "two", "9", "--rules", "mf"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "whole numbers" in bad.stderr


def _sent_tree(tmp_path: Path) -> tuple[Path, str]:
    """This checkout's tracked files as a device call sends them (no .git), and their commit."""
    sent = tmp_path / "sent"
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.split(b"\0")
    subprocess.run(
        ["tar", "-C", str(ROOT), "--null", "-T", "-", "-cf", str(tmp_path / "t.tar")],
        input=b"\0".join(f for f in files if f and (ROOT / f.decode()).exists()),
        check=True,
    )
    sent.mkdir()
    subprocess.run(["tar", "-C", str(sent), "-xf", str(tmp_path / "t.tar")], check=True)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
    }
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "sent"]):
        subprocess.run(["git", "-C", str(sent), *cmd], env=env, check=True)
    sha = subprocess.run(
        ["git", "-C", str(sent), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (sent / ".call").mkdir()
    commit = subprocess.run(
        ["git", "-C", str(sent), "cat-file", "commit", "HEAD"], capture_output=True, check=True
    ).stdout
    (sent / ".call" / "commit").write_bytes(commit)
    subprocess.run(["rm", "-rf", str(sent / ".git")], check=True)
    return sent, sha


def _device_call(sent: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "1", "OUT": str(out)}
    job = " ".join(["tiny", "1", *ARGS, "--seeds", "1", "--epochs", "1"])
    cmd = ["bash", "benchmarks/device_call.sh", "300", job]
    return subprocess.run(cmd, cwd=sent, env=env, capture_output=True, text=True, timeout=600)


def _recorded_sha(out: Path) -> str | None:
    with tarfile.open(out / "tiny.tar.gz") as tar:
        envs = [n for n in tar.getnames() if n.endswith("/env.json")]
        assert envs, "no run came back"
        return json.loads(tar.extractfile(envs[0]).read())["git_sha"]  # type: ignore[union-attr]


def test_a_device_call_runs_from_the_commit_it_was_sent_from(tmp_path: Path) -> None:
    sent, sha = _sent_tree(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    done = _device_call(sent, out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"checkout {sha}" in done.stdout
    assert _recorded_sha(out) == sha  # clean: no "-dirty"
    # a file that differs from the commit's: no commit is claimed for the runs
    (sent / "README.md").write_text((sent / "README.md").read_text() + "\nchanged\n")
    again = tmp_path / "again"
    again.mkdir()
    done = _device_call(sent, again)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "runs record no commit" in done.stdout
    assert _recorded_sha(again) is None
