#!/usr/bin/env bash
# Launch one xlplastic run on every worker of a Cloud TPU pod slice (each worker is one JAX process).
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG.yaml RUN_DIR [--set key=value ...]
# RUN_DIR must be shared storage (e.g. gs://bucket/runs/x through a gcsfuse mount) so that every host
# reads the same checkpoints; each host reads only its own rows of every batch.
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; config=${3:?config}; run_dir=${4:?run dir}; shift 4
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e
  cd ~/xlplastic || { git clone https://github.com/YOUR_ORG/xlplastic ~/xlplastic && cd ~/xlplastic; }
  python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]'
  XLPLASTIC_DISTRIBUTED=auto .venv/bin/xlplastic run $config --run-dir $run_dir $extra
"
