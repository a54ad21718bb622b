"""`bpfree data fetch` against a local HTTP server on 127.0.0.1 serving fixture files."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import importlib
import signal
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bpfree.cli import main
from bpfree.data import DATASETS, load_dataset
from bpfree.data.catalog import RemoteFile
from bpfree.data.fetch import fetch, fetch_file
from bpfree.errors import DataError

from conftest import idx_bytes


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate: typing.ClassVar[set[str]] = set()

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        path = Path(self.directory) / name
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # A "killed" download: promise the whole body, send half, close the connection.
        self.wfile.write(body[: len(body) // 2] if name in self.truncate else body)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "served"
    root.mkdir()
    handler = _Handler

    def factory(*args: object, **kwargs: object) -> _Handler:
        return handler(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
    handler.truncate.clear()


def _serve_mnist_like(root: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 40, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 10, dtype=np.uint8),
    }
    sums = {}
    for name, arr in arrays.items():
        raw = gzip.compress(idx_bytes(arr))
        (root / name).write_bytes(raw)
        sums[name] = hashlib.sha256(raw).hexdigest()
    return sums


def test_fetch_verifies_and_then_loads(server, tmp_path: Path, no_env_data: Path) -> None:
    url, root = server
    sums = _serve_mnist_like(root)
    spec = replace(
        DATASETS.get("mnist"),
        remote=tuple(RemoteFile(n, s, (f"{url}/{n}",)) for n, s in sums.items()),
    )
    folder = fetch(spec, tmp_path / "data", quiet=True)
    assert folder == tmp_path / "data" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(sums)
    data = load_dataset("mnist", data_dir=tmp_path / "data")
    assert data.info["n_test"] == 10 and data.info["n_train"] + data.info["n_val"] == 40


def test_bad_checksum_leaves_nothing(server, tmp_path: Path) -> None:
    url, root = server
    (root / "f.gz").write_bytes(b"not what was promised")
    remote = RemoteFile("f.gz", "0" * 64, (f"{url}/f.gz",))
    with pytest.raises(DataError, match="bad checksum"):
        fetch_file(remote, tmp_path / "out", quiet=True)
    assert list((tmp_path / "out").iterdir()) == []


def test_interrupted_download_never_looks_complete(server, tmp_path: Path) -> None:
    url, root = server
    body = bytes(range(256)) * 4000
    remote = RemoteFile("big.gz", hashlib.sha256(body).hexdigest(), (f"{url}/big.gz",))
    (root / "big.gz").write_bytes(body)
    _Handler.truncate.add("big.gz")  # the server promises the whole body and sends half
    with pytest.raises(DataError):
        fetch_file(remote, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out" / "big.gz").exists()
    assert not list((tmp_path / "out").glob("*.part"))


def test_mirror_fallback_to_second_url(server, tmp_path: Path) -> None:
    url, root = server
    (root / "ok.gz").write_bytes(b"payload")
    remote = RemoteFile(
        "ok.gz",
        hashlib.sha256(b"payload").hexdigest(),
        ("http://127.0.0.1:9/ok.gz", f"{url}/ok.gz"),  # port 9: nothing listens
    )
    path = fetch_file(remote, tmp_path / "out", quiet=True, timeout=5)
    assert path.read_bytes() == b"payload"
    # A second fetch finds the verified file and downloads nothing.
    (root / "ok.gz").unlink()
    assert fetch_file(remote, tmp_path / "out", quiet=True) == path


def test_cli_fetch_with_mirror_rejects_wrong_files(
    server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, root = server
    _serve_mnist_like(root)  # not the canonical bytes: checksums cannot match
    code = main(["data", "fetch", "fashion_mnist", "--data-dir", str(tmp_path), "--mirror", url])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad checksum" in err and "train-images-idx3-ubyte.gz" in err
    assert not list((tmp_path / "fashion_mnist").glob("*.gz"))


def test_cli_fetch_unknown_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "fetch", "fashon_mnist"]) == 2
    assert "did you mean: fashion_mnist" in capsys.readouterr().err


class _Hostile(http.server.BaseHTTPRequestHandler):
    """A server that sends forever (`/endless`) or one byte at a time (`/trickle`)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()  # no Content-Length: the body ends when the server says so
        try:
            while True:
                if self.path.endswith("endless"):
                    self.wfile.write(b"\0" * 65536)
                else:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def hostile() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_an_endless_body_is_cut_at_the_size_limit(
    hostile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the module (bpfree.data's `fetch` attribute is the function of the same name)
    monkeypatch.setattr(importlib.import_module("bpfree.data.fetch"), "MAX_BYTES", 1 << 20)
    remote = RemoteFile("f.gz", "0" * 64, (f"{hostile}/endless",))
    with pytest.raises(DataError, match="byte limit"):
        fetch_file(remote, tmp_path / "out", quiet=True, timeout=5)
    assert list((tmp_path / "out").iterdir()) == []  # no partial file left


def test_a_trickling_server_is_cut_at_the_deadline(hostile: str, tmp_path: Path) -> None:
    remote = RemoteFile("f.gz", "0" * 64, (f"{hostile}/trickle",))
    start = time.monotonic()
    with pytest.raises(DataError, match="deadline"):
        fetch_file(remote, tmp_path / "out", quiet=True, timeout=5, deadline=1.0)
    assert time.monotonic() - start < 10  # each read is quick; the deadline ends it
    assert list((tmp_path / "out").iterdir()) == []


def test_sigterm_during_a_download_leaves_no_partial_file(hostile: str, tmp_path: Path) -> None:
    code = (
        "from pathlib import Path\n"
        "from bpfree.data.catalog import RemoteFile\n"
        "from bpfree.data.fetch import fetch_file\n"
        f"remote = RemoteFile('f.gz', '0' * 64, ({hostile + '/trickle'!r},))\n"
        f"fetch_file(remote, Path({str(tmp_path / 'out')!r}), quiet=True, timeout=5)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    part = tmp_path / "out" / "f.gz.part"
    for _ in range(100):  # wait until the download has started
        if part.exists():
            break
        time.sleep(0.1)
    assert part.exists()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode != 0 and not part.exists()
