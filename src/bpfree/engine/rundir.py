"""The run directory: what a run leaves behind, and the rules for reusing or resuming it.

``config.json`` and ``env.json`` when the run starts, ``metrics.jsonl`` (one line per epoch,
appended after each checkpoint), ``checkpoint.pt`` after every epoch, ``result.json`` (atomic)
and ``model.pt`` at the end. Without a directory (``out=None``) every method does nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bpfree.config import TrainConfig
from bpfree.engine.checkpoint import CHECKPOINT, load_checkpoint
from bpfree.engine.io import RESULT_FIELDS, read_json, save_torch, write_json, write_text
from bpfree.engine.result import RunResult
from bpfree.errors import ConfigError

RESULT, METRICS, MODEL = "result.json", "metrics.jsonl", "model.pt"


class RunDir:
    def __init__(self, out: Path | None, resume: bool) -> None:
        self.out, self.resume = out, resume

    def finished(self) -> RunResult | None:
        """The stored result of a finished run, when resuming one."""
        if self.out is None or not self.resume:
            return None
        path = self.out / RESULT
        if path.exists() and not (self.out / CHECKPOINT).exists():
            data = read_json(path, RESULT_FIELDS)
            if data.get("status") in ("completed", "diverged"):
                return RunResult.from_dict(data, self.out)
        return None

    def checkpoint(self, config: TrainConfig) -> dict[str, Any] | None:
        """The checkpoint to resume from (or None); refuse to clobber another run."""
        if self.out is None:
            if self.resume:
                raise ConfigError("--resume needs --out (the run directory to continue)")
            return None
        if not self.resume:
            if (self.out / CHECKPOINT).exists() or (self.out / RESULT).exists():
                raise ConfigError(
                    f"{self.out} already holds a run; pass --resume to continue it "
                    "or choose another --out"
                )
            return None
        return load_checkpoint(self.out, config)

    def start(self, config: TrainConfig, env: dict[str, Any]) -> None:
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "config.json", config.to_dict())
            write_json(self.out / "env.json", env)

    def reset_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl to the epochs of ``history`` (a resume drops later lines)."""
        if self.out is not None:
            write_text(self.out / METRICS, "".join(json.dumps(h) + "\n" for h in history))

    def append_metrics(self, record: dict[str, Any]) -> None:
        if self.out is not None:
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def write_result(self, result: RunResult, model_state: dict[str, Any] | None = None) -> None:
        """result.json; with ``model_state`` also model.pt, and the checkpoint is removed."""
        if self.out is None:
            return
        if model_state is not None:
            save_torch(self.out / MODEL, model_state)
        write_json(self.out / RESULT, result.to_dict())
        if result.status != "interrupted":  # a finished run keeps no checkpoint
            (self.out / CHECKPOINT).unlink(missing_ok=True)
