#!/usr/bin/env bash
# Trains on every worker of a Cloud TPU pod slice: the same command on all hosts.
#
#   bash launch/tpu_pod.sh TPU_NAME ZONE gs://BUCKET/workdir \
#       --config=configs/v3plus_cityscapes.py --config.data.root=/data/cityscapes
#
# 1. copies this repository to every worker (gcloud ... scp --worker=all),
# 2. creates .venv there from requirements.txt plus jax[tpu] (once; later runs reuse it),
# 3. runs deeplab_jax.main with --jax_distributed on all workers at once; JAX reads the pod's
#    topology from the TPU environment. The workdir must be one every host sees (a gs://
#    bucket). Relaunching the same command resumes from the latest checkpoint; a
#    maintenance event (SIGTERM) saves a checkpoint first.
# Data: data.root must exist on every worker (a mounted disk or a copy per host).
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,14p' "$0"; exit 2
fi
TPU="$1"; ZONE="$2"; WORKDIR="$3"; shift 3
REPO_DIR=deeplab_jax_repo
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$1"
}
tar czf /tmp/deeplab_jax_repo.tgz --exclude=.venv --exclude=.git .
gcloud compute tpus tpu-vm scp /tmp/deeplab_jax_repo.tgz "$TPU":/tmp/ --zone="$ZONE" --worker=all
ssh_all "mkdir -p $REPO_DIR && tar xzf /tmp/deeplab_jax_repo.tgz -C $REPO_DIR && cd $REPO_DIR && \
  { [ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt \
  && .venv/bin/pip install -q 'jax[tpu]==0.10.2'; }; }"
ARGS=$(printf ' %q' "$@")
ssh_all "cd $REPO_DIR && .venv/bin/python -m deeplab_jax.main --jax_distributed \
  --workdir=$WORKDIR $ARGS"
