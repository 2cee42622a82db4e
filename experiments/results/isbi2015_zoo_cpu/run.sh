#!/usr/bin/env bash
# Trains the model families not yet trained on ISBI 2015 at their CPU settings, one
# after the other, then evaluates each on test1 against the senior doctor.
#   bash experiments/results/isbi2015_zoo_cpu/run.sh NAME=CONFIG:ARG:STEPS[:FLAGS] ...
# FLAGS: further `lmjax train` flags, separated by spaces.
# Run dirs under $RUNS (default /tmp/runs/zoo); decodes shared in $RUNS/cache.
set -u
here=$(cd "$(dirname "$0")" && pwd)
runs=${RUNS:-/tmp/runs/zoo}
mkdir -p "$runs/cache"
for spec in "$@"; do
  IFS='=' read -r name rest <<<"$spec"
  IFS=':' read -r config arg steps extra <<<"$rest"
  work="$runs/$name"
  mkdir -p "$here/$name"
  start=$(date +%s)
  echo "== $name: $config:$arg, $steps steps, start $(date -u +%H:%M:%S)"
  lmjax train --config="experiments/configs/$config.py:$arg" --workdir="$work" \
    --config.data.cache_dir="$runs/cache" --config.train.steps="$steps" ${extra:-} \
    >"$here/$name/train_log.txt" 2>&1
  echo "   train rc=$? in $(( $(date +%s) - start )) s"
  lmjax evaluate --workdir="$work" --split=test1 --ground_truth=senior \
    --output="$here/$name/test1_senior.json" >"$here/$name/eval_log.txt" 2>&1
  echo "   evaluate rc=$? total $(( $(date +%s) - start )) s, end $(date -u +%H:%M:%S)"
  cp "$work/metrics.jsonl" "$here/$name/" 2>/dev/null
done
