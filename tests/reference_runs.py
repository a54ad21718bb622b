"""Tiny-budget reference runs: the same seed and settings must give bit-identical metrics.

Float results depend on the machine (CPU vector extensions, torch build) as well as on the code,
so a reference is the pair (code, machine): ``tests/data/reference_metrics.json`` holds the
metrics of every case as computed by the code of commit ``recorded_at`` on the machine
``machine``. ``tests/test_reference_metrics.py`` reruns every case with the current code and
compares exactly: against the stored metrics on that machine, and elsewhere against the metrics
the ``recorded_at`` code computes on the machine running the test (its ``src/`` and this file,
taken from git into a temporary folder). Runs use one torch thread (the reduction order depends
on the thread count).

    python tests/reference_runs.py --at COMMIT     # (re-)record from COMMIT's code, here

A commit that changes a case's behaviour on purpose re-records from itself and says why.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "reference_metrics.json"
VOLATILE = ("train_wall_time_s", "eval_wall_time_s", "selection_wall_time_s")  # timings

# (label, rule, model, hparams): every rule and the variants whose code paths differ.
CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("bp", "bp", "mlp_2x64", {}),
    ("bp-cnn", "bp", "cnn_3block", {}),
    ("mf", "mf", "mlp_2x64", {}),
    ("mf-sequential", "mf", "mlp_2x64", {"schedule": "sequential"}),
    ("mf-sum", "mf", "mlp_2x64", {"predict_from": "sum"}),
    ("ff", "ff", "mlp_2x64", {}),
    ("ff-classifier", "ff", "mlp_2x64", {"predict_mode": "classifier"}),
    (
        "ff-layerwise",
        "ff",
        "mlp_2x64",
        {"schedule": "layerwise", "predict_mode": "classifier"},
    ),
    ("ff-peer", "ff", "mlp_2x64", {"peer_norm": 0.03, "lr_cooldown": True}),
    ("cafo", "cafo", "cnn_3block", {}),
    ("cafo-dfa", "cafo", "cnn_3block", {"blocks": "dfa", "dfa_epochs": 2}),
    ("cafo-mse", "cafo", "cnn_3block", {"predictor_loss": "mse"}),
    ("cafo-sl", "cafo", "cnn_3block", {"predictor_loss": "sl"}),
    ("dfa", "dfa", "mlp_2x64", {}),
    ("fa", "fa", "mlp_2x64", {}),
    ("bp-cooldown", "bp", "mlp_2x64", {"lr_cooldown": True}),
]
SETTINGS = dict(dataset="digits", epochs=3, patience=2, seed=11, device="cpu")


def machine() -> dict[str, str]:
    """What, besides the code, decides the float results of a CPU run."""
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }


def run_case(rule: str, model: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Train one case in this process (one thread) and return its comparable record."""
    from bpfree.config import TrainConfig
    from bpfree.engine import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig.build({**SETTINGS, "rule": rule, "model": model, "hparams": hparams})
        history: list[dict[str, Any]] = []

        def keep(record: dict[str, Any]) -> None:
            history.append({k: v for k, v in record.items() if k not in VOLATILE})

        result = Trainer(config, None, progress=False, on_epoch=keep).run()
    finally:
        torch.set_num_threads(threads)
    return {"status": result.status, "metrics": result.metrics, "history": history}


def run_at(commit: str) -> dict[str, Any]:
    """Every case, computed here by the code of ``commit`` (its src/ and reference_runs.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "src", "tests/reference_runs.py"],
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        env = {**os.environ, "PYTHONPATH": str(Path(tmp) / "src")}
        script = Path(tmp) / "tests" / "reference_runs.py"
        # That file's own __main__ records into its own tests/data; read the cases back.
        subprocess.run(
            [sys.executable, str(script)], cwd=tmp, env=env, check=True, capture_output=True
        )
        return json.loads((Path(tmp) / "tests" / "data" / "reference_metrics.json").read_text())[
            "cases"
        ]


def record(commit: str | None) -> None:
    """Record every case: computed by ``commit``'s code (or this tree's), on this machine."""
    if commit is None:
        cases = {label: run_case(rule, model, hp) for label, rule, model, hp in CASES}
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    else:
        cases = run_at(commit)
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    data = {"recorded_at": commit, "machine": machine(), "settings": SETTINGS, "cases": cases}
    REFERENCE.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {REFERENCE} ({len(cases)} cases, code of {commit}, on {machine()})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--at", metavar="COMMIT", help="record from this commit's code")
    record(ap.parse_args().at)
