#!/usr/bin/env bash
# CPU ablations of the heatmap U-Net (experiments/configs/isbi2015_unet_heatmap.py:cpu,
# through unet_ablation_config.py, which declares model.norm):
# fp32 vs bf16 compute, instance norm vs batch norm vs none, resize vs transposed-conv
# upsampling. Variants alternate within each round so that load drifts of the shared
# machine hit all of them alike; repeats reuse compiled steps from the persistent cache.
# Usage (from the repository root): bash experiments/results/cpu_ablations/run.sh LAST [FIRST]
# runs rounds FIRST (default 1) .. LAST.
set -euo pipefail
rounds=${1:-2}
first=${2:-1}
out=experiments/results/cpu_ablations/raw
export LMJAX_DATA=${LMJAX_DATA:-/work/shared/data}
declare -A variant=(
  [base]=""
  [bf16]="--config.task.compute_dtype=bfloat16"
  [norm_none]="--config.model.norm=none"
  [norm_batch]="--config.model.norm=batch"
  [transpose]="--config.model.upsample=transpose"
)
order=(base bf16 norm_none norm_batch transpose)
# The cpu config (256 x 192, 6 levels, batch 8) took 27 min per run here (80 s per step
# and 7 min of compile with the machine shared); shrunk to fit the session.
shrink=(--config.data.input_size="(64, 48)" --config.model.num_levels=4
        --config.train.batch_size=2)
mkdir -p "$out"
for r in $(seq "$first" "$rounds"); do
  for v in "${order[@]}"; do
    echo "round $r $v $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    # shellcheck disable=SC2086
    lmjax benchmark --config=experiments/results/cpu_ablations/unet_ablation_config.py:cpu \
      ${variant[$v]} "${shrink[@]}" --steps=3 --infer_batch=1 \
      --compilation_cache_dir=/tmp/lmjax_cpu_ablation_cache \
      --output="$out/${v}_r${r}.json" > "$out/${v}_r${r}.txt" 2>&1
    echo "  done $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  done
done
