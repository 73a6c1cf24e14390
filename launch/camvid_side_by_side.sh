#!/usr/bin/env bash
# One seed of the CamVid side by side of docs/baselines.md ("Boundaries"): DeepLabv3+, the same
# DeepLabv3+ scored with the dense CRF, FastFCN and Gated-SCNN, each its config's `cpu,dev`
# variant (one data set, budget in steps, and evaluation), scored with mIoU and the boundary
# F-score at the paper's tolerances (1, 2, 3 and 4 px at 360 x 480) on dev_0006R0 and val.
#
#   bash launch/camvid_side_by_side.sh OUT SEED --config.data.root=../shared/data/camvid
#   python launch/summarize.py --seeds=OUT/gscnn_s0,OUT/gscnn_s1,OUT/gscnn_s2
#
# Workdirs OUT/{v3plus,fastfcn,gscnn}_sSEED; the CRF's lines are in v3plus's evals.jsonl under
# their own protocol. Extra flags (after SEED) go to every command.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,12p' "$0"; exit 2
fi
OUT="$1"; SEED="$2"; shift 2
PY="${PYTHON:-python}"
HERE="$(dirname "$0")"
BOUNDARY='--config.eval.boundary_tolerances=(0.00131,0.00218,0.00393,0.00524)'
for run in v3plus:configs/v3plus_camvid.py fastfcn:configs/fastfcn_ade20k.py \
           gscnn:configs/gscnn_cityscapes.py; do
  name="${run%%:*}"; file="${run#*:}"
  bash "$HERE/dev_trial.sh" "$OUT/${name}_s$SEED" --config="$file:cpu,dev" \
      --config.seed="$SEED" "$BOUNDARY" "$@"
done
for split in dev_0006R0 val; do
  "$PY" -m deeplab_jax.main --workdir="$OUT/v3plus_s$SEED" --config=configs/v3plus_camvid.py:cpu,dev \
      --config.seed="$SEED" "$BOUNDARY" "$@" --mode=eval --config.eval.split="$split" \
      --config.eval.crf.enabled=True >> "$OUT/v3plus_s$SEED.log" 2>&1
done
"$PY" "$HERE/summarize.py" --runs="$OUT/v3plus_s$SEED,$OUT/fastfcn_s$SEED,$OUT/gscnn_s$SEED"
