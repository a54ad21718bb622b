"""Where sweeps live: an Optuna RDB storage (SQLite file by default, PostgreSQL to scale out).

Why SQLite and not Optuna's journal file by default: of Optuna's file backends only the RDB
storage has heartbeats (``heartbeat_interval`` / ``grace_period``), and heartbeats are what turn
a worker killed mid-trial into a FAIL trial that is retried. The SQLite file is put in WAL mode
and opened with a long lock timeout, which is safe for several processes on one machine (not on
a network file system: use PostgreSQL for many machines).

Optuna, SQLAlchemy and the PostgreSQL driver are optional (``pip install 'bpfree[sweep]'``) and
imported only here, lazily.
"""

from __future__ import annotations

import os
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bpfree.errors import ConfigError, shorten

STORAGE_ENV = "BPFREE_STORAGE"
DEFAULT_FILE = "bpfree-sweeps.db"
SQLITE_LOCK_TIMEOUT_S = 60  # a writer waits this long for another process's lock
CREATE_RETRIES = 5  # opening a new database races with other processes creating its tables
RACE_MESSAGES = ("already exists", "duplicate key", "UniqueViolation", "UNIQUE constraint failed")


def import_optuna() -> Any:
    """Import optuna, or say how to install it."""
    try:
        import optuna
    except ImportError as exc:
        raise ConfigError(
            "sweeps need Optuna: pip install 'bpfree[sweep]' (optuna and psycopg2-binary)"
        ) from exc
    return optuna


def resolve_url(storage: str | None = None) -> str:
    """A storage URL from ``--storage``, else ``$BPFREE_STORAGE``, else ``./bpfree-sweeps.db``.

    A plain path means a SQLite file; ``postgres://`` is accepted as ``postgresql://``.
    """
    text = storage or os.environ.get(STORAGE_ENV) or DEFAULT_FILE
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        return f"sqlite:///{path}"
    scheme, rest = text.split("://", 1)
    if scheme == "postgres":
        return f"postgresql://{rest}"
    if scheme.split("+")[0] == "sqlite" and not rest.startswith("/"):
        raise ConfigError(f"sweep storage {shorten(text)} names no file; use sqlite:///FILE")
    if scheme.split("+")[0] in ("sqlite", "postgresql"):
        return text
    raise ConfigError(
        f"unsupported sweep storage {redact(text)!r}; use a file path, sqlite:///FILE "
        "or postgresql://USER:PASSWORD@HOST:PORT/DB"
    )


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and stored records."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def for_record(url: str) -> str:
    """The URL as a stored record gives it: password hidden, and a SQLite file by its name
    alone (its folder is one machine's detail, and results must not hold local paths)."""
    url = redact(url)
    if url.startswith("sqlite") and ":///" in url:
        head, path = url.split(":///", 1)
        return f"{head}:///{Path(path).name}" if path != ":memory:" else url
    return url


def sqlite_missing(url: str) -> bool:
    """A SQLite URL whose file does not exist yet (opening it would create it)."""
    if not url.startswith("sqlite") or ":///" not in url:
        return False
    path = url.split(":///", 1)[1]
    return path != ":memory:" and not Path(path).exists()


def _prepare_sqlite(url: str) -> dict[str, Any]:
    """Create the file's folder and switch the database to WAL (a persistent property)."""
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=SQLITE_LOCK_TIMEOUT_S) as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers no longer block the writer
    return {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}


def _postgres_driver(url: str) -> str:
    """Pick an installed driver for a plain ``postgresql://`` URL.

    SQLAlchemy 2.1 maps the plain scheme to psycopg 3; bpfree's ``sweep`` extra installs
    psycopg2-binary. Use whichever is installed (an explicit ``postgresql+driver://`` is kept).
    """
    if not url.startswith("postgresql://"):
        return url
    for module, scheme in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        try:
            __import__(module)
        except ImportError:
            continue
        return scheme + url.removeprefix("postgresql")
    raise ConfigError("PostgreSQL storage needs a driver: pip install psycopg2-binary")


def open_storage(
    storage: str | None = None,
    *,
    heartbeat_interval_s: int | None = None,
    grace_period_s: int | None = None,
    stale_trial_callback: Callable[[Any, Any], None] | None = None,
) -> Any:
    """Open (and create the tables of) an ``optuna.storages.RDBStorage``.

    With ``heartbeat_interval_s`` a running trial records a heartbeat that often; one silent for
    ``grace_period_s`` is marked FAIL by the next worker that looks, which then calls
    ``stale_trial_callback(study, frozen_trial)``.
    """
    optuna = import_optuna()
    url = resolve_url(storage)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        try:
            engine_kwargs = _prepare_sqlite(url)
        except sqlite3.Error as exc:  # a folder, not a database, unwritable, ...
            raise ConfigError(f"cannot open sweep storage {shorten(url)}: {exc}") from None
    elif url.startswith("postgresql"):
        url = _postgres_driver(url)
        engine_kwargs = {"pool_pre_ping": True}  # survive a server restart between trials
    import sqlalchemy.exc

    for attempt in range(CREATE_RETRIES + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval_s,
                    grace_period=grace_period_s,
                    heartbeat_stale_trial_callback=stale_trial_callback,
                )
            except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error) as exc:
                text = str(exc).strip()
                # Processes that open a new database at once race to create its tables; the
                # loser sees "already exists" (or a duplicate key in PostgreSQL's catalog).
                if attempt < CREATE_RETRIES and any(m in text for m in RACE_MESSAGES):
                    time.sleep(0.2 * (attempt + 1))
                    continue
                first = text.splitlines()[0] if text else type(exc).__name__
                where = shorten(redact(url))
                raise ConfigError(f"cannot open sweep storage {where}: {first}") from exc
    raise AssertionError("unreachable")
