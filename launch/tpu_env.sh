#!/usr/bin/env bash
# Run on a Cloud TPU VM worker: prints `export` lines setting XLPLASTIC_COORDINATOR, XLPLASTIC_NUM_PROCESSES
# and XLPLASTIC_PROCESS_ID from this worker's identity, found where JAX's own cluster detection finds it:
#   1. TPU_WORKER_ID with TPU_PROCESS_ADDRESSES or TPU_WORKER_HOSTNAMES in the environment (GKE), else
#   2. the GCE metadata server (TPU VMs created with `gcloud compute tpus tpu-vm create` or queued
#      resources): attributes `agent-worker-number` and `worker-network-endpoints` (a comma-separated list
#      of `host` or `name:id:ip`, sorted by worker number), at $GCE_METADATA_IP (default
#      metadata.google.internal).
# The coordinator is worker 0's address, at PORT (default 8482, JAX's choice on TPU).
# Prints nothing (and says why on stderr) when it cannot tell, or on a multi-slice (MEGASCALE_*) launch:
# XLPLASTIC_DISTRIBUTED=auto then leaves it to jax.distributed.initialize()'s own detection.
#   eval "$(bash tpu_env.sh [PORT])"
set -uo pipefail
port=${1:-8482}
md() {
  curl -sf --max-time 5 --retry 2 -H 'Metadata-Flavor: Google' \
    "http://${GCE_METADATA_IP:-metadata.google.internal}/computeMetadata/v1/instance/attributes/$1"
}
if [[ -n ${MEGASCALE_NUM_SLICES:-} && ${MEGASCALE_NUM_SLICES} != 1 ]]; then
  echo "tpu_env.sh: multi-slice launch (MEGASCALE_NUM_SLICES=$MEGASCALE_NUM_SLICES): left to jax.distributed auto-detection" >&2
  exit 0
fi
id=${TPU_WORKER_ID:-}
hosts=${TPU_PROCESS_ADDRESSES:-${TPU_WORKER_HOSTNAMES:-}}
if [[ -z $id || -z $hosts ]]; then
  id=$(md agent-worker-number) || id=
  endpoints=$(md worker-network-endpoints) || endpoints=
  hosts=
  IFS=, read -ra eps <<<"$endpoints"
  for e in "${eps[@]}"; do
    IFS=: read -ra parts <<<"$e"
    case ${#parts[@]} in
      1) hosts+=${hosts:+,}${parts[0]} ;;
      3) hosts+=${hosts:+,}${parts[2]} ;;
      *) echo "tpu_env.sh: unsupported worker-network-endpoints entry '$e'; left to jax.distributed auto-detection" >&2
         exit 0 ;;
    esac
  done
fi
if [[ ! $id =~ ^[0-9]+$ || -z $hosts ]]; then
  echo "tpu_env.sh: no TPU worker identity (TPU_WORKER_ID / metadata agent-worker-number: '${id}'," \
       "worker list: '${hosts}'); left to jax.distributed auto-detection" >&2
  exit 0
fi
IFS=, read -ra list <<<"$hosts"
n=${#list[@]}
if ((id >= n)); then
  echo "tpu_env.sh: worker number $id, but the worker list has $n entries ($hosts)" >&2
  exit 1
fi
coordinator=${list[0]%%:*}
echo "export XLPLASTIC_COORDINATOR=$coordinator:$port XLPLASTIC_NUM_PROCESSES=$n XLPLASTIC_PROCESS_ID=$id"
