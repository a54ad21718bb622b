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
echo "Fetching $name from its canonical source ..." >&2
if "$BIN/bpfree" data fetch "$name" --timeout 30 >&2 && found; then echo "$name"; exit 0; fi
echo "NOTE: $name is not available here (no Debian package, no network);" \
     "falling back to scikit-learn's bundled 8x8 'digits' dataset." >&2
echo digits
