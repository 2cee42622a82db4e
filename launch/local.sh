#!/bin/bash
# Starts P `lmjax train` processes on this machine as one multi-process job, with
# explicit coordinator flags: to try multi-process training (and its checkpoints)
# without a cluster, or to split a machine's GPUs between processes.
#
#   launch/local.sh [-n P] [-p PORT] [--gpus] -- [lmjax train flags ...]
#
#   -n P      number of processes (default 2)
#   -p PORT   coordinator port on 127.0.0.1 (default: a free one)
#   --gpus    give process i the i-th of P equal slices of the GPUs via
#             CUDA_VISIBLE_DEVICES (default: CPU only, collectives over gloo)
#
# Examples:
#   launch/local.sh -n 2 -- --config=lmjax/configs/phantom.py:tiny --workdir=/tmp/run2
#   launch/local.sh -n 2 --gpus -- --config=experiments/configs/isbi2015_unet_heatmap.py --workdir=runs/x
#
# Process i writes its output to <workdir or .>/process_<i>.log. When one process
# fails, the others are stopped: they would otherwise wait in a collective.

set -euo pipefail

procs=2
port=""
gpus=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) procs="$2"; shift 2 ;;
    -p) port="$2"; shift 2 ;;
    --gpus) gpus=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "local.sh: unknown option $1 (lmjax flags go after --)" >&2; exit 2 ;;
  esac
done
if [[ -z "$port" ]]; then
  port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

logdir="."
for arg in "$@"; do
  [[ "$arg" == --workdir=* ]] && logdir="${arg#--workdir=}"
done
mkdir -p "$logdir"

env_common=()
if [[ $gpus -eq 1 ]]; then
  total=$(nvidia-smi --list-gpus | wc -l)
  if (( total % procs )); then
    echo "local.sh: $total GPUs do not split into $procs equal slices" >&2
    exit 2
  fi
  per=$((total / procs))
else
  # CPU only: one CPU device per process unless XLA_FLAGS asks for more
  # (--xla_force_host_platform_device_count=N).
  env_common=(JAX_PLATFORMS=cpu)
fi

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM

for ((i = 0; i < procs; i++)); do
  env_i=("${env_common[@]}")
  if [[ $gpus -eq 1 ]]; then
    env_i+=("CUDA_VISIBLE_DEVICES=$(seq -s, $((i * per)) $((i * per + per - 1)))")
  fi
  flags=(--coordinator_address="127.0.0.1:$port" --num_processes="$procs" --process_id="$i")
  [[ $gpus -eq 0 ]] && flags+=(--cpu_collectives=gloo)
  env "${env_i[@]}" lmjax train "${flags[@]}" "$@" >"$logdir/process_$i.log" 2>&1 &
  pids+=($!)
  echo "process $i: pid ${pids[-1]}, log $logdir/process_$i.log"
done

# Wait for all; the first failure stops the rest.
status=0
for ((left = procs; left > 0; left--)); do
  if ! wait -n; then
    status=1
    echo "local.sh: a process failed; stopping the others (see $logdir/process_*.log)" >&2
    cleanup
    break
  fi
done
wait || true
exit $status
