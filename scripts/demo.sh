#!/usr/bin/env bash
# The main job, short: Mono-Forward, Forward-Forward, Cascaded-Forward and DFA, each beside
# backprop on the same network (same split, budget, stopping rule and seeds); prints one line per
# run, the table, and writes runs/demo-<dataset>/report/report.html. 5 passes over 5,000 images
# are the fewest at which every rule learns (README.md). The full benchmark is in README.md.
set -eu
BIN="${BIN:-.venv/bin}"
dataset=$(bash scripts/ensure-data.sh fashion_mnist)
samples=5000
[ "$dataset" = digits ] && samples=1500
"$BIN/bpfree" compare --rules mf,ff,cafo,dfa --dataset "$dataset" --seeds 1 --epochs 5 \
  --train-samples "$samples" --out "runs/demo-$dataset" --quiet
