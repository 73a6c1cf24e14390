#!/usr/bin/env bash
# One recipe trial on a dev split: train, then score the dev split and val, each with the
# average of the weights (when the flags set optim.ema_decay) and with the raw weights.
#
#   bash launch/dev_trial.sh WORKDIR --config=configs/v3plus_camvid.py:cpu,dev \
#       --config.data.root=/path/to/camvid [--config.optim.ema_decay=0.995 ...]
#   python launch/summarize.py --runs=WORKDIR
#
# The average does not change training, so one run gives both figures. Every command's log
# goes to WORKDIR.log; the figures are WORKDIR/evals.jsonl's rows.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,10p' "$0"; exit 2
fi
WORKDIR="$1"; shift
PY="${PYTHON:-python}"
LOG="${WORKDIR%/}.log"
"$PY" -m deeplab_jax.main --workdir="$WORKDIR" "$@" >> "$LOG" 2>&1
DEV="$("$PY" - "$@" <<'PY'
import sys
from absl import flags
from ml_collections import config_flags
config_flags.DEFINE_config_file('config')
flags.FLAGS(['x'] + [a for a in sys.argv[1:] if a.startswith('--config')])
print(flags.FLAGS.config.eval.split)
PY
)"
for split in "$DEV" val; do
  "$PY" -m deeplab_jax.main --workdir="$WORKDIR" "$@" --mode=eval --config.eval.split="$split" >> "$LOG" 2>&1
  "$PY" -m deeplab_jax.main --workdir="$WORKDIR" "$@" --mode=eval --config.eval.split="$split" \
      --config.optim.ema_decay=0 >> "$LOG" 2>&1
done
"$PY" "$(dirname "$0")/summarize.py" --runs="$WORKDIR"
