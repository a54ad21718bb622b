#!/usr/bin/env bash
# One call of a borrowed GPU machine (docs/device.md): comparisons trained side by side from a
# clean checkout, their archives left in $OUT.
#
#   bash benchmarks/device_call.sh DEADLINE_S "NAME WORKERS COMPARE_ARGS..." ["NAME ..."]...
#
# Run from the root of the working tree the call sent. If .whl/ holds wheels they are installed
# first (optuna and its needs, which that machine lacks). If .call/commit holds `git cat-file
# commit HEAD` of the commit the tree was sent from, the tree is copied to a fresh folder and
# given that commit: its SHA is recomputed from the files, so it is that commit only if they are
# exactly its files (then every run's env.json records it, clean); else the runs record none.
# Each job is `benchmarks/parallel_compare.sh OUT NAME WORKERS DEADLINE_S COMPARE_ARGS` (all at
# once, sharing the machine); .data is linked into the checkout, so a relative --data-dir
# under .data works. The jobs' OUT is $CALL_RUNS (default: a fresh folder; an unpacked earlier
# archive carried there continues its comparison). NAME.tar.gz of each job is copied into $OUT.
set -u
if [ $# -lt 2 ]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
deadline=$1
shift
here=$(pwd)
out=${OUT:?OUT is the folder the call sends back}
work=$(mktemp -d)
runs=${CALL_RUNS:-$work/out}
t0=$SECONDS
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$work/site" .whl/*.whl || exit 1
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
command -v nvidia-smi >/dev/null &&
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit --format=csv,noheader
src="$work/src"
mkdir -p "$src"
tar -C "$here" --exclude=./.data --exclude=./.whl --exclude=./.call --exclude=./.git --exclude=./.venv --exclude=./.runs -cf - . |
  tar -C "$src" --no-same-owner -xf -
cd "$src" || exit 1
if [ -f "$here/.call/commit" ] && command -v git >/dev/null; then
  want=$(sed -n 's/^tree //p' "$here/.call/commit")
  git init -q && git add -A && tree=$(git write-tree)
  if [ "$tree" = "$want" ]; then
    sha=$(git hash-object -t commit -w "$here/.call/commit") && git update-ref HEAD "$sha"
    echo "checkout $sha"
  else
    echo "the files sent are not the commit's (tree $tree, commit's $want): runs record no commit"
    rm -rf .git
  fi
else
  echo "no .call/commit (or no git): runs record no commit"
fi
[ -e "$here/.data" ] && ln -s "$here/.data" .data
echo "setup $((SECONDS - t0)) s"
names=()
for job in "$@"; do
  # shellcheck disable=SC2086 # a job is words: NAME WORKERS COMPARE_ARGS...
  set -- $job
  name=$1 workers=$2
  shift 2
  bash benchmarks/parallel_compare.sh "$runs" "$name" "$workers" "$deadline" "$@" &
  names+=("$name")
done
wait
for name in "${names[@]}"; do
  cp "$runs/$name.tar.gz" "$out/" 2>/dev/null || echo "$name: no archive (see its logs)"
  tail -n 3 "$runs/$name"-w0.log 2>/dev/null
done
echo "total $((SECONDS - t0)) s"
