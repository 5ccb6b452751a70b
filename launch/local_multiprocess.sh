#!/usr/bin/env bash
# N JAX processes on this machine (CPU), talking through jax.distributed: a rehearsal of a multi-host launch.
#   launch/local_multiprocess.sh 2 configs/tiny.yaml runs/mp [--set k=v ...]
set -euo pipefail
n=${1:?number of processes}; config=${2:?config}; run_dir=${3:?run dir}; shift 3
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu xlplastic run "$config" --run-dir "$run_dir" --coordinator "localhost:$port" \
    --num-processes "$n" --process-id "$i" "$@" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
