"""Download a dataset's canonical files, verify SHA-256, write atomically, within bounds.

A download goes to ``<name>.part`` beside its destination and is renamed into place only after
its checksum matches, so an interrupted or corrupt download never leaves a file that looks
complete; the part file is removed on any error, Ctrl-C or SIGTERM. A file already present with
the right checksum is not downloaded again.

Bounds: ``timeout`` seconds per network read, one overall ``deadline`` per file, and at most
``MAX_BYTES`` per file (the largest dataset file, CIFAR's archive, is about 163 MiB): a server
that sends forever, or one byte at a time, is cut off.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bpfree.data.catalog import DatasetSpec, RemoteFile, default_fetch_dir
from bpfree.errors import ConfigError, DataError, shorten
from bpfree.progress import progress_bar
from bpfree.signals import sigterm_as_interrupt

CHUNK = 1 << 20
MAX_BYTES = 512 << 20  # per file
DEADLINE_S = 1800.0  # per file, all reads together


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, part: Path, timeout: float, deadline: float, quiet: bool) -> None:
    """Stream ``url`` into ``part``; DataError past ``MAX_BYTES`` or the deadline."""
    request = urllib.request.Request(url, headers={"User-Agent": "bpfree"})
    ends = time.monotonic() + deadline
    with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        if total is not None and total > MAX_BYTES:
            raise DataError(f"{url} announces {total} bytes, over the {MAX_BYTES} byte limit")
        with progress_bar(
            total=total, desc=part.name.removesuffix(".part"), unit="B", disable=quiet
        ) as bar:
            size = 0
            while block := response.read1(CHUNK):  # what has arrived: never waits for CHUNK
                size += len(block)
                if size > MAX_BYTES:
                    raise DataError(f"{url} sent more than the {MAX_BYTES} byte limit")
                if time.monotonic() > ends:
                    raise DataError(f"{url} took longer than the {deadline:g} s deadline")
                out.write(block)
                bar.update(len(block))
        out.flush()
        os.fsync(out.fileno())


def fetch_file(
    remote: RemoteFile,
    folder: Path,
    *,
    mirror: str | None = None,
    timeout: float = 60.0,
    deadline: float = DEADLINE_S,
    quiet: bool = False,
) -> Path:
    """Fetch one file into ``folder``; return its path. Raises DataError when no mirror works."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.name
    if target.is_file() and sha256_of(target) == remote.sha256:
        return target
    urls = [mirror.rstrip("/") + "/" + remote.name] if mirror else list(remote.urls)
    part = folder / (remote.name + ".part")
    errors = []
    for url in urls:
        try:
            with sigterm_as_interrupt():
                _download(url, part, timeout, deadline, quiet)
        except (urllib.error.URLError, http.client.HTTPException, OSError, DataError) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
            part.unlink(missing_ok=True)
            continue
        except BaseException:  # Ctrl-C, SIGTERM: no partial file stays behind
            part.unlink(missing_ok=True)
            raise
        got = sha256_of(part)
        if got != remote.sha256:
            part.unlink(missing_ok=True)
            errors.append(f"{url}: bad checksum (sha256 {got}, expected {remote.sha256})")
            continue
        os.replace(part, target)  # atomic on one filesystem
        return target
    raise DataError(f"could not fetch {remote.name}: " + "; ".join(errors))


def fetch(
    spec: DatasetSpec,
    data_dir: str | Path | None = None,
    *,
    mirror: str | None = None,
    timeout: float = 60.0,
    deadline: float = DEADLINE_S,
    quiet: bool | None = None,
) -> Path:
    """Fetch every file of ``spec`` into ``<data_dir>/<name>/``; return that folder."""
    if not spec.remote:
        what = "bundled" if spec.format == "builtin" else "read from your own files"
        raise DataError(f"dataset {spec.name!r} is {what} ({spec.note}); nothing to fetch")
    if mirror is not None and not mirror.startswith(("http://", "https://", "file://")):
        raise ConfigError(f"--mirror {shorten(mirror)} is not an http://, https:// or file:// URL")
    folder = default_fetch_dir(data_dir) / spec.name
    if quiet is None:
        quiet = not sys.stderr.isatty()
    for remote in spec.remote:
        fetch_file(remote, folder, mirror=mirror, timeout=timeout, deadline=deadline, quiet=quiet)
    return folder
