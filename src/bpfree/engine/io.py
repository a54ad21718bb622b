"""Atomic file writes: a reader never sees a half-written JSON or checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from bpfree.errors import ConfigError
from bpfree.signals import deferred_interrupts

_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write: Any, mode: str) -> None:
    """Write to a temporary file, then rename; Ctrl-C or SIGTERM wait until it is done."""
    with deferred_interrupts():
        _write_then_rename(path, write, mode)


def _write_then_rename(path: Path, write: Any, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    _atomic(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=False) + "\n"), "w")


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text), "w")


def save_torch(path: Path, obj: Any) -> None:
    _atomic(path, lambda f: torch.save(obj, f), "wb")


# What the files bpfree reads back must hold (field: type); more fields may follow.
RESULT_FIELDS: dict[str, type] = {
    "status": str,
    "rule": str,
    "model": str,
    "dataset": str,
    "seed": int,
    "metrics": dict,
    "cost": dict,
    "config": dict,
}
MANIFEST_FIELDS: dict[str, type] = {
    "dataset": str,
    "digest": str,
    "entries": list,
    "runs": list,
}
ENTRY_FIELDS: dict[str, type] = {
    "label": str,
    "rule": str,
    "model": str,
    "twin": str,
}
PLANNED_FIELDS: dict[str, type] = {"key": str, "label": str, "config": dict}


def read_json(path: Path, fields: dict[str, type] | None = None) -> Any:
    """A JSON file bpfree wrote; a corrupt one is a one-line error naming it and the fix.

    ``fields``: the file must hold an object with these fields of these types.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _corrupt(path, str(exc)) from None
    if fields is not None:
        check_fields(data, fields, path)
    return data


def check_fields(data: Any, fields: dict[str, type], path: Path) -> None:
    """``data`` is an object with ``fields`` of their types, or ``path`` is named as corrupt."""
    if not isinstance(data, dict):
        raise _corrupt(path, f"a {type(data).__name__} where an object belongs")
    for name, kind in fields.items():
        value = data.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _corrupt(path, f"field {name!r} is missing or not a {kind.__name__}")


def _corrupt(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"{path} is corrupt ({why}); delete it, or the run folder holding it, and rerun"
    )
