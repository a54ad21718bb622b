"""Tiny-budget reference runs: the same seed and settings must give bit-identical metrics.

``python tests/reference_runs.py`` records every case into ``tests/data/reference_metrics.json``
(with the commit it was recorded at); ``tests/test_reference_metrics.py`` reruns each case and
compares. Runs use one torch thread (results depend on the thread count: reduction order).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import bpfree

REFERENCE = Path(__file__).resolve().parent / "data" / "reference_metrics.json"
VOLATILE = ("train_wall_time_s", "eval_wall_time_s")  # timings: never reproducible

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
]
SETTINGS = dict(dataset="digits", epochs=3, patience=2, seed=11, device="cpu")


def run_case(rule: str, model: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Train one case in this process (one thread) and return its comparable record."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer_result = _train(rule, model, hparams)
    finally:
        torch.set_num_threads(threads)
    return trainer_result


def _train(rule: str, model: str, hparams: dict[str, Any]) -> dict[str, Any]:
    from bpfree.config import TrainConfig
    from bpfree.engine import Trainer

    config = TrainConfig.build({**SETTINGS, "rule": rule, "model": model, "hparams": hparams})
    trainer = Trainer(config, None, progress=False, on_epoch=None)
    history: list[dict[str, Any]] = []
    trainer.on_epoch = lambda record: history.append(
        {k: v for k, v in record.items() if k not in VOLATILE}
    )
    result = trainer.run()
    return {"status": result.status, "metrics": result.metrics, "history": history}


def record() -> None:
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    cases = {label: run_case(rule, model, hp) for label, rule, model, hp in CASES}
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(
        json.dumps(
            {
                "recorded_at": sha,
                "bpfree": bpfree.__version__,
                "settings": SETTINGS,
                "cases": cases,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {REFERENCE} ({len(cases)} cases, commit {sha})")


if __name__ == "__main__":
    sys.exit(record())
