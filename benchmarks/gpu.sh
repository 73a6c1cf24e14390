#!/bin/bash
# The GPU rows of benchmarks/RESULTS.md in one run: measured bf16 peak, the v3+ ResNet-101
# OS16 513² batch-16 bf16 step with its utilisation, and deeplabv3 ResNet-101 against
# torchvision's best (bf16 autocast, channels_last, torch.compile) at the same settings.
#
#   bash benchmarks/gpu.sh OUTDIR        # an estimated 8-11 minutes on one H100 or H200
#                                        # (SKIP_JPU=1: without the JPU comparison, 6-8)
#
# First it runs tests/test_cpu_kernels.py there (the CPU kernels against the plain path, both
# computed on the GPU; log in OUTDIR/cpu_kernels_test.txt); it needs pytest, which travels as
# wheels like ml_collections (below: pytest pluggy iniconfig packaging); without it the step says
# so and is skipped (SKIP_TESTS=1 skips it too).
# Each result is a JSON file in OUTDIR (peak.json, v3plus_r101.json, compare_r101.json, jpu.json) and
# the whole log is OUTDIR/log.txt. It needs JAX with a GPU backend, flax, optax, absl,
# ml_collections, and torch + torchvision for the comparison; not TensorFlow (the step
# benchmark runs on a random batch). On a machine that lacks ml_collections and cannot reach
# a package index, fetch its wheel where pip works, into .whl/ (ignored by git):
#
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl ml_collections==1.1.0 \
#       pytest pluggy iniconfig packaging
#
# and this script installs what .whl/ holds into a private folder before it starts.
# CROP, BATCH, STEPS, OS, MODEL_DTYPE and PEAK_SIZE override the settings (a CPU dry run:
# CROP=65 BATCH=2 STEPS=1 MODEL_DTYPE=float32 PEAK_SIZE=512 JPU_CROP=65 JPU_WIDTH=0.125 \
#   JPU_STEPS=1 bash benchmarks/gpu.sh /tmp/dry).
# It exits non-zero when any step fails or prints no JSON object; the other steps still run.
set -u -o pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUTDIR}
crop=${CROP:-513}
batch=${BATCH:-16}
steps=${STEPS:-20}
os=${OS:-16}
dtype=${MODEL_DTYPE:-bfloat16}
python=${PYTHON:-python3}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1
cd "$(dirname "$0")/.." || exit 1
exec > >(tee "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
if compgen -G '.whl/*.whl' > /dev/null; then
  if ! $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/deeplab_jax_site .whl/*.whl; then
    echo "pip failed: the wheels go on PYTHONPATH as they are (pure-Python ones import so)"
    for whl in "$PWD"/.whl/*.whl; do PYTHONPATH=$whl${PYTHONPATH:+:$PYTHONPATH}; done
  fi
  export PYTHONPATH=/tmp/deeplab_jax_site${PYTHONPATH:+:$PYTHONPATH}
fi
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
# Everything the step needs (TensorFlow is not among it), imported before any time is spent.
$python -c 'import flax, jax, optax, deeplab_jax.steps
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())
' || exit 1

failed=0
run() {  # run NAME COMMAND...: the last JSON object the command prints goes to OUTDIR/NAME.json
  local name=$1 start=$SECONDS
  shift
  echo "== $name: $*"
  if ! "$@" > "$out/$name.stdout"; then
    echo "== $name failed"; cat "$out/$name.stdout"; failed=1; return 1
  fi
  if ! $python -c 'import json, sys
text = sys.stdin.read()
start = text.rfind("\n{") + 1  # the last object printed from the start of a line
json.dump(json.loads(text[start:]), sys.stdout, indent=1)
' < "$out/$name.stdout" > "$out/$name.json"; then
    echo "== $name printed no JSON object"; cat "$out/$name.stdout"; failed=1; return 1
  fi
  rm "$out/$name.stdout"
  cat "$out/$name.json"; echo
  echo "== $name took $((SECONDS - start)) s"
}

# The test file alone: --noconftest (tests/conftest.py wants TensorFlow Datasets and pins JAX to
# the CPU), the repository's pytest.ini addopts (pytest-xdist) overridden. JAX_PLATFORMS set
# empty, not unset, leaves JAX its default backend, the GPU.
if [ "${SKIP_TESTS:-0}" = 1 ]; then
  echo "== cpu_kernels_test skipped (SKIP_TESTS=1)"
elif ! $python -c 'import pytest' 2> /dev/null; then
  echo "== cpu_kernels_test skipped: pytest is not importable here; carry its wheels in .whl/"
else
  echo "== cpu_kernels_test: tests/test_cpu_kernels.py"
  start=$SECONDS
  platforms=${JAX_PLATFORMS-}
  if JAX_PLATFORMS=$platforms $python -c 'import jax; print("backend", jax.default_backend())' \
      && JAX_PLATFORMS=$platforms $python -m pytest -q -rfE --noconftest -o addopts= \
        -p no:cacheprovider tests/test_cpu_kernels.py > "$out/cpu_kernels_test.txt" 2>&1; then
    tail -n 1 "$out/cpu_kernels_test.txt"
  else
    echo "== cpu_kernels_test failed"; tail -n 40 "$out/cpu_kernels_test.txt"; failed=1
  fi
  echo "== cpu_kernels_test took $((SECONDS - start)) s"
fi

run peak $python benchmarks/peak.py --dtype=bfloat16 --size="${PEAK_SIZE:-8192}"
peak=$($python -c 'import json, sys; print(json.load(open(sys.argv[1]))["peak_tflops"])' \
  "$out/peak.json" 2>/dev/null) || peak=0  # 0: utilisation left null
run v3plus_r101 $python benchmarks/train_step.py --config=configs/v3plus_voc.py:resnet101 \
  --config.train.batch_size="$batch" --config.model.dtype="$dtype" \
  --config.model.output_stride="$os" --config.data.crop_size="($crop,$crop)" \
  --num_classes=21 --steps="$steps" --warmup=3 --peak_tflops="$peak"
run compare_r101 $python benchmarks/compare_torch.py --model=resnet101 --crop="$crop" \
  --batch="$batch" --output_stride="$os" --dtype="$dtype" --steps="$steps" --warmup=3
# FastFCN's claim (issue 30): ResNet-50 + JPU against dilated ResNet-50 OS8, the same ASPP head,
# at FastFCN's FPS protocol (512 x 512, batch 1, float32 forward); JPU_CROP etc. for a dry run.
if [ "${SKIP_JPU:-0}" != 1 ]; then
  run jpu $python benchmarks/jpu.py --crop="${JPU_CROP:-512}" --batch=1 \
    --train_batch="${JPU_TRAIN_BATCH:-8}" --steps="${JPU_STEPS:-10}" --width="${JPU_WIDTH:-1.0}"
fi
date -u
exit $failed
