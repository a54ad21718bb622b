#!/usr/bin/env bash
# The main job, short: backprop vs Mono-Forward on the same MLP, same split, budget and
# stopping rule; prints a table. The full benchmark is in README.md.
set -eu
BIN="${BIN:-.venv/bin}"
dataset=$(bash scripts/ensure-data.sh fashion_mnist)
samples=10000
[ "$dataset" = digits ] && samples=1500
"$BIN/python" benchmarks/seeds.py --rules bp,mf --model mlp_2x1000 --dataset "$dataset" \
  --seeds 0 --epochs 3 --train-samples "$samples" --runs runs/demo
