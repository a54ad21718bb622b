#!/usr/bin/env bash
# One comparison trained by several processes on one machine (a GPU machine's many cores and
# one GPU, or this VM's two cores), collected into a results folder and one archive.
#
#   bash benchmarks/parallel_compare.sh OUT NAME WORKERS DEADLINE_S COMPARE_ARGS...
#   bash benchmarks/parallel_compare.sh /tmp/o noprop 9 540 --rules noprop,noprop:variant=ct \
#       --dataset fashion_mnist --data-dir .data/fashion-mnist --seeds 3 --epochs 30 --device cuda
#
# The WORKERS processes run the same `bpfree compare COMPARE_ARGS` and share its seeded runs
# through a SQLite storage (OUT/NAME.db; `--storage`, docs/sweeps.md: each run is a ticket,
# claimed once). After DEADLINE_S seconds, or when the script itself gets Ctrl-C or SIGTERM, the
# processes still running are stopped as by Ctrl-C (their runs go back to the queue; nothing
# half-trained is reported). Then the finished runs are collected
# (benchmarks/collect_comparison.py: small files and the report, no weights) into OUT/NAME/ and
# packed with the logs and the storage (tuning trials too) into OUT/NAME.tar.gz. Rerunning with
# the same OUT continues: finished runs are reused. Needs optuna (the `sweep` extra). PY
# (python3) is the interpreter; bpfree is imported from ./src.
set -euo pipefail
if [ $# -lt 5 ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
out=$1 name=$2 workers=$3 deadline=$4
shift 4
case "$workers$deadline" in *[!0-9]*) echo "WORKERS and DEADLINE_S are whole numbers" >&2; exit 2 ;; esac
[ "$workers" -ge 1 ] || { echo "WORKERS must be at least 1" >&2; exit 2; }
PY=${PY:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$out"
db="sqlite:///$(cd "$out" && pwd)/$name.db"
pids=()
for ((i = 0; i < workers; i++)); do
  "$PY" -m bpfree compare "$@" --storage "$db" --out "$out/$name-w$i" --quiet --no-report \
    >"$out/$name-w$i.log" 2>&1 &
  pids+=($!)
  sleep 1 # the first process creates the storage's studies; the rest find them
done
end=$((SECONDS + deadline))
alive() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
# Ctrl-C, SIGTERM or a closed terminal ends the wait as the deadline does: collected all the same
stop=0
trap 'stop=1' INT TERM HUP
while [ $SECONDS -lt $end ] && [ "$stop" -eq 0 ] && alive; do sleep 2; done
# SIGTERM, which bpfree treats as Ctrl-C (a background job of a script ignores SIGINT)
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
[ "$failed" -eq 0 ] || echo "$failed of $workers processes stopped early or failed: see $out/$name-w*.log" >&2
# every process writes the runs finished elsewhere into its own out: take the fullest
best="" most=-1
for ((i = 0; i < workers; i++)); do
  n=$( (find "$out/$name-w$i/runs" -name result.json 2>/dev/null || true) | wc -l)
  if [ -f "$out/$name-w$i/compare.json" ] && [ "$n" -gt "$most" ]; then best="$out/$name-w$i" most=$n; fi
done
[ -n "$best" ] || { echo "no process planned the comparison: see $out/$name-w0.log" >&2; exit 1; }
"$PY" "$root/benchmarks/collect_comparison.py" "$best" "$out/$name" >/dev/null 2>&1
planned=$(grep -c '"key":' "$out/$name/compare.json" || true)
finished=$( (find "$out/$name/runs" -name result.json 2>/dev/null || true) | wc -l)
# the storage goes along: its tuning trials and tickets let another machine continue (--storage)
tar czf "$out/$name.tar.gz" -C "$out" "$name" $(cd "$out" && ls "$name"-w*.log "$name".db*)
echo "$finished of $planned runs finished; collected into $out/$name and $out/$name.tar.gz" >&2
