#!/usr/bin/env bash
# The package as `pip install bpfree` gives it (no extras: no matplotlib, no optuna), in a
# fresh virtual environment: the main commands work, or say in one line which extra they need.
# Run by .ci/run; `bash scripts/bare-install-check.sh` runs it by hand (about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
venv=$(mktemp -d)/bare
work=$(mktemp -d)
trap 'rm -rf "$venv" "$work"' EXIT
"$PYTHON" -m venv "$venv"
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
"$venv/bin/pip" install --quiet "torch==2.13.0"
"$venv/bin/pip" install --quiet .
bp="$venv/bin/bpfree"
fail() { echo "bare install: $*" >&2; exit 1; }

for module in matplotlib optuna; do
  if "$venv/bin/python" -c "import $module" 2>/dev/null; then
    fail "$module is installed: this is not the bare package"
  fi
done
"$bp" --version
"$bp" list >/dev/null
"$bp" train --rule mf --dataset digits --epochs 1 --train-samples 200 --quiet --out "$work/run" \
  >/dev/null
"$bp" compare --rules mf --dataset digits --seeds 1 --epochs 1 --train-samples 200 --quiet \
  --out "$work/cmp" 2>"$work/compare.err" >/dev/null
test -s "$work/cmp/report/report.html" || fail "compare wrote no report.html without matplotlib"
test -s "$work/cmp/report/table.md" || fail "compare wrote no table.md without matplotlib"
grep -q "matplotlib" "$work/compare.err" || fail "compare did not say it skipped the plots"
"$bp" report "$work/cmp" >/dev/null 2>&1 || fail "report failed without matplotlib"

# Commands that need an extra: exit 2, one line, naming what to install.
set +e
"$bp" sweep --study s --storage "$work/s.db" --rule mf --dataset digits --trials 1 \
  2>"$work/sweep.err" >/dev/null
code=$?
set -e
[ "$code" = 2 ] || fail "sweep without optuna exited $code, not 2"
[ "$(wc -l <"$work/sweep.err")" = 1 ] || fail "sweep without optuna printed: $(cat "$work/sweep.err")"
grep -q "pip install" "$work/sweep.err" || fail "sweep did not name the extra to install"
echo "bare install: version, list, train, compare (tables and page, plots skipped), report and"
echo "the one-line message of sweep without its extra all hold"
