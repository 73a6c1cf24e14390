#!/usr/bin/env bash
# Trains on every worker of a Cloud TPU pod slice: the same command on all hosts.
#
#   bash launch/tpu_pod.sh TPU_NAME ZONE gs://BUCKET/workdir \
#       --config=configs/v3plus_cityscapes.py --config.data.root=/data/cityscapes
#
# 1. ships the committed tree (`git archive HEAD`; uncommitted changes are not sent) to
#    ~/deeplab_jax_repo on every worker, replacing the previous copy,
# 2. keeps ~/deeplab_jax_venv built from requirements.txt plus jax[tpu] at the same version,
#    rebuilt whenever requirements.txt changes (its sha256 is kept in the venv),
# 3. runs deeplab_jax.main with --jax_distributed on all workers at once; JAX reads the pod's
#    topology from the TPU environment. The workdir must be one every host sees (a gs://
#    bucket). Relaunching the same command resumes from the latest checkpoint; a
#    maintenance event (SIGTERM) saves a checkpoint first.
# Data: data.root must exist on every worker (a mounted disk or a copy per host).
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,15p' "$0"; exit 2
fi
TPU="$1"; ZONE="$2"; WORKDIR="$3"; shift 3
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$1"
}
if [[ -n "$(git status --porcelain --untracked-files=no)" ]]; then
  echo "tpu_pod.sh: uncommitted changes are not shipped; the workers run HEAD." >&2
fi
ARCHIVE="$(mktemp -d)/deeplab_jax_repo.tgz"
trap 'rm -rf "$(dirname "$ARCHIVE")"' EXIT
git archive --format=tar.gz -o "$ARCHIVE" HEAD
gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU":/tmp/deeplab_jax_repo.tgz --zone="$ZONE" \
  --worker=all

# Runs on each worker: a fresh copy of the tree, and the venv rebuilt when requirements change.
read -r -d '' SETUP <<'EOF' || true
set -euo pipefail
repo="$HOME/deeplab_jax_repo"; venv="$HOME/deeplab_jax_venv"
rm -rf "$repo.new" && mkdir -p "$repo.new"
tar xzf /tmp/deeplab_jax_repo.tgz -C "$repo.new"
rm -rf "$repo" && mv "$repo.new" "$repo"
want="$(sha256sum "$repo/requirements.txt" | cut -d' ' -f1)"
if [[ "$(cat "$venv/requirements.sha256" 2>/dev/null)" != "$want" ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$repo/requirements.txt"
  "$venv/bin/pip" install -q "jax[tpu]==$(sed -n 's/^jax==//p' "$repo/requirements.txt")"
  echo "$want" > "$venv/requirements.sha256"
fi
EOF
ssh_all "bash -c $(printf '%q' "$SETUP")"

ARGS=""
if [[ $# -gt 0 ]]; then
  ARGS="$(printf ' %q' "$@")"
fi
ssh_all "cd \"\$HOME/deeplab_jax_repo\" && \"\$HOME/deeplab_jax_venv/bin/python\" -m \
deeplab_jax.main --jax_distributed --workdir=$(printf '%q' "$WORKDIR")$ARGS"
