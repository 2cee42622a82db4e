#!/usr/bin/env bash
# Parameters and train-step FLOPs per image of every model family at its paper
# setting, from `lmjax compile-check` (XLA's cost analysis of the compiled train
# step; nothing is allocated or run). Usage, from the repository root:
#   bash experiments/results/model_flops/run.sh && python experiments/results/model_flops/summarize.py
set -uo pipefail
out=experiments/results/model_flops/raw
export LMJAX_DATA=${LMJAX_DATA:-/work/shared/data}
mkdir -p "$out"
runs=(
  "isbi2015_unet_heatmap.py:gpu"
  "isbi2015_unet_heatmap.py:cpu"
  "isbi2015_unet_segmentation.py:cpu"
  "isbi2015_ceph_seg.py:unet"
  "isbi2015_ceph_seg.py:fpn"
  "isbi2015_vgg.py:unet"
  "isbi2015_vgg.py:regression"
  "isbi2015_vgg.py:seg_regression"
  "isbi2015_swin_unetr.py:gpu"
  "phantom_hrnet.py:mse"
  "phantom_hrnet.py:proposed"
  "phantom_hrnet.py:proposed --config.model.width=48"
  "isbi2015_vit_lora.py:b"
  "isbi2015_vit_lora.py:l"
)
for r in "${runs[@]}"; do
  cfg=${r%% *}
  extra=""; [[ "$r" == *" "* ]] && extra=${r#* }
  name=$(echo "${cfg%.py*}_${cfg##*:}${extra:+_w48}" | tr -c 'A-Za-z0-9_\n' '_')
  echo "$(date +%T) $r"
  # shellcheck disable=SC2086
  lmjax compile-check --config="experiments/configs/$cfg" $extra \
    --output="$out/$name.json" > "$out/$name.txt" 2>&1 || echo "  failed: see $out/$name.txt"
done
