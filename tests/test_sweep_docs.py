"""Every command in docs/sweeps.md runs, shrunk to digits and a tiny budget.

The documented blocks are run as written by bash (``bpfree`` from this environment), with only
these changes: Fashion-MNIST -> digits, mlp_2x1000 -> mlp_1x32, 3 trials of 2 epochs, the
PostgreSQL URL of the test server, and study names made unique (the test database persists).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from bpfree.sweeps import open_storage
from sweep_helpers import assert_exactly_n, worker_env

optuna = pytest.importorskip("optuna", reason="sweeps need the 'sweep' extra (optuna)")
DOC = Path(__file__).resolve().parents[1] / "docs" / "sweeps.md"
PG = os.environ.get("BPFREE_TEST_POSTGRES")
BIN = Path(sys.executable).parent
DASHBOARD = "optuna-dashboard"


def sections() -> dict[str, list[tuple[str, str]]]:
    """{section title: [(language, code), ...]} of the doc's fenced blocks."""
    out: dict[str, list[tuple[str, str]]] = {}
    for part in DOC.read_text().split("\n## ")[1:]:
        title, _, body = part.partition("\n")
        out[title.strip()] = re.findall(r"```(bash|python)\n(.*?)```", body, flags=re.S)
    return out


def shrink(code: str, suffix: str, storage: str | None = None) -> str:
    code = code.replace("fashion_mnist", "digits").replace("mlp_2x1000", "mlp_1x32")
    code = re.sub(r"--trials \d+", "--trials 3", code)
    code = re.sub(r"--tune \d+", "--tune 2", code)
    code = re.sub(r"--tune-epochs \d+", "--tune-epochs 2", code)
    code = re.sub(r"--seeds \d+", "--seeds 2", code)
    code = re.sub(r"--epochs \d+", "--epochs 2", code)
    code = re.sub(r"--train-samples \d+", "--train-samples 600", code)
    code = re.sub(r"n_trials=\d+", "n_trials=3", code)
    code = re.sub(r'"epochs": \d+', '"epochs": 2', code)
    code = re.sub(r'"train_samples": \d+', '"train_samples": 600', code)
    code = re.sub(r"(--study(?:-name)? )([\w-]+)", rf"\g<1>\g<2>-{suffix}", code)
    if storage is not None:
        code = code.replace("$(bash scripts/postgres-test-server.sh)", storage)
        code = re.sub(r"postgresql(\+\w+)?://\S+", storage, code)
    return code


def run_bash(script: str, cwd: Path) -> str:
    env = dict(worker_env(), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("BPFREE_STORAGE", None)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{script}\n---\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_documented_one_machine_commands_two_workers_share_the_default_file(
    tmp_path: Path,
) -> None:
    suffix = uuid.uuid4().hex[:6]
    blocks = [shrink(code, suffix) for _, code in sections()["One machine"]]
    out = run_bash("\n".join(blocks), tmp_path)
    storage = f"sqlite:///{tmp_path / 'bpfree-sweeps.db'}"  # the default storage
    assert_exactly_n(f"mf-fmnist-{suffix}", storage, 3)
    # Two worker processes at once on the SQLite file: exactly the budget, nothing run twice.
    trials = assert_exactly_n(f"bp-fmnist-{suffix}", storage, 3)
    assert len(trials) == 3
    assert (tmp_path / "best-mf.toml").exists() and (tmp_path / "best-bp.toml").exists()
    assert "test accuracy" in out  # the documented `bpfree train --config best-mf.toml`


def test_documented_python_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [(_, code)] = sections()["From Python"]
    monkeypatch.chdir(tmp_path)
    exec(compile(shrink(code, "x"), str(DOC), "exec"), {})
    assert_exactly_n("mf-fmnist", f"sqlite:///{tmp_path / 'sweeps.db'}", 3)


@pytest.mark.skipif(not PG, reason="no PostgreSQL server configured (BPFREE_TEST_POSTGRES)")
def test_documented_postgres_commands(tmp_path: Path) -> None:
    assert PG is not None
    suffix = uuid.uuid4().hex[:6]
    docs = sections()
    script = []
    for _, code in docs["Many machines: PostgreSQL"] + docs["Reading a study"]:
        code = shrink(code, suffix, PG)
        if DASHBOARD in code:
            continue  # a server: test_documented_dashboard_reads_the_storage starts it
        if "bpfree worker" in code:  # "on each of the N machines": two at once
            code = f"( {code.strip()} ) &\n( {code.strip()} ) &\nwait"
        script.append(code)
    out = run_bash("\n".join(script), tmp_path)
    study = f"mf-fmnist-50-{suffix}"
    assert_exactly_n(study, PG, 3)
    assert "value:" in out  # optuna best-trial -f yaml
    optuna.delete_study(study_name=study, storage=open_storage(PG))


def test_documented_shared_comparison_on_two_machines(tmp_path: Path) -> None:
    """The documented `bpfree compare --tune --storage`, run at once in two folders (two
    machines: nothing shared but the storage), on PostgreSQL if configured, else SQLite."""
    [(_, code)] = sections()["Tuning inside a comparison"]
    storage = PG or f"sqlite:///{tmp_path / 'cmp.db'}"
    code = shrink(code, "x", storage).strip()
    if PG:  # a comparison of its own: the test database persists
        code = code.replace("--tune-epochs 2", f"--tune-epochs 2 --set data_seed={os.getpid()}")
    script = [
        f"mkdir m{i} && ( cd m{i} && {code} ) > m{i}.out 2> m{i}.err & p{i}=$!" for i in (1, 2)
    ]
    run_bash("\n".join([*script, "wait $p1", "wait $p2"]), tmp_path)
    tables = [(tmp_path / f"m{i}/cmp-fmnist/report/table.md").read_text() for i in (1, 2)]
    assert tables[0] == tables[1] and "tuned: 2 trials each, same budget" in tables[0]
    manifest = json.loads((tmp_path / "m1/cmp-fmnist/compare.json").read_text())
    runs = optuna.load_study(
        study_name=manifest["shared"]["runs_study"], storage=open_storage(storage)
    ).get_trials()
    assert sorted(t.user_attrs["key"] for t in runs if t.state.name == "COMPLETE") == sorted(
        r["key"] for r in manifest["runs"]
    )
    for study in manifest["tuning"]["studies"].values():
        assert_exactly_n(study["study"], storage, 2)
    if PG:
        names = [s["study"] for s in manifest["tuning"]["studies"].values()]
        for name in [*names, manifest["shared"]["runs_study"]]:
            optuna.delete_study(study_name=name, storage=open_storage(PG))


def test_documented_dashboard_reads_the_storage(tmp_path: Path) -> None:
    exe = shutil.which(DASHBOARD) or shutil.which(DASHBOARD, path=str(BIN))
    if exe is None:
        pytest.skip("optuna-dashboard is not installed (pip install optuna-dashboard)")
    [(_, code)] = [b for b in sections()["Reading a study"] if DASHBOARD in b[1]]
    storage = f"sqlite:///{tmp_path / 'd.db'}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bpfree",
            "sweep",
            "--study",
            "dash",
            "--storage",
            storage,
            "--rule",
            "bp",
            "--model",
            "mlp_1x32",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--trials",
            "1",
            "--quiet",
        ],
        check=True,
        env=worker_env(),
    )
    port = 18000 + os.getpid() % 1000
    cmd = code.strip().replace('"$BPFREE_STORAGE"', storage).split()
    server = subprocess.Popen(
        [exe, *cmd[1:], "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert [s["study_name"] for s in studies] == ["dash"]
