"""Answers that only change with the code, kept on disk so the command line gives them fast.

``bpfree list`` describes the registered rules, models and datasets. Building that answer
imports the rule modules and with them torch (about 2 s on a small CPU), yet the answer only
changes when bpfree's own files do. It is kept in the user cache under a digest of every source
file's path, size and modification time (and the Python and bpfree versions), so the second and
later calls answer in milliseconds, and any edit, upgrade or reinstall computes it afresh. A
process that already imported the rules (a program using bpfree as a library) is not served
from the cache.
This module imports nothing heavy: that is its point.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bpfree.version import __version__

PACKAGE = Path(__file__).resolve().parent


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bpfree"


def code_digest() -> str:
    """A digest of bpfree's source files (path, size, mtime) and the interpreter's version."""
    h = hashlib.sha256(f"{__version__} {sys.version}".encode())
    for path in sorted(PACKAGE.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(PACKAGE)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def cached_answer(key: str, produce: Callable[[], str]) -> str:
    """``produce()``, or what it returned last time for ``key`` under the same code.

    A process that has loaded the registries itself (a program using bpfree as a library may
    have registered rules of its own) always gets a fresh answer.
    """
    if "bpfree.rules" in sys.modules:
        return produce()
    code = code_digest()
    path = (
        user_cache_dir() / "answers" / f"{code}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.txt"
    )
    with contextlib.suppress(OSError):
        return path.read_text()
    text = produce()
    with contextlib.suppress(OSError):  # a read-only home only makes the next call slower
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob("*.txt"):
            if not old.name.startswith(code):
                old.unlink(missing_ok=True)  # answers of code no longer installed
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return text
