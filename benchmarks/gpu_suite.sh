#!/usr/bin/env bash
# GPU suite (issue 13): RoBERTa-base (configs/roberta_base.yaml shapes), sequence 512, bf16, on one GPU:
# xlplastic (cuDNN attention) vs HF transformers RobertaForMaskedLM (PyTorch, bf16 autocast, SDPA), timed
# side by side by `xlplastic bench train`: tokens/s, MFU (documented FLOPs formula, data-sheet bf16 peak),
# peak device memory, and the compile time of the scanned and the unrolled layer layouts. Writes one JSON.
#
#   benchmarks/gpu_suite.sh [--out PATH] [--batch B] [--tiny] [-- extra `xlplastic bench train` options]
#
# --tiny: the same script at a size a CPU runs in seconds (configs/tiny.yaml: 2 layers, d=64; a few steps,
# XLA attention, PyTorch on the CPU); tests/test_gpu_suite.py runs it as the test of this script.
# Environment: PYTHON (default: python3), BATCH (per-GPU batch, default 32; --batch wins).
# Goal it exists for: xlplastic MFU >= 55% on an H100/H200 and >= 2x PyTorch's tokens/s (docs/benchmarks.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT="gpu_suite.json"
BATCH="${BATCH:-32}"
TINY=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tiny) TINY=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --batch) BATCH="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_suite.sh: error: unknown option $1; expected --out PATH, --batch B, --tiny or -- OPTIONS" >&2; exit 2 ;;
  esac
done

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Compile times are measured: no persistent compilation cache may answer them.
unset JAX_COMPILATION_CACHE_DIR JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES

if [[ $TINY == 1 ]]; then
  export JAX_PLATFORMS=cpu
  MODE=tiny
  SIZE=(--config "$ROOT/configs/tiny.yaml" --batch 4 --steps 2 --rounds 1 --warmup 1 --attention-impl xla)
else
  MODE=gpu
  # JAX and PyTorch share the GPU in one process: JAX allocates on demand instead of taking 75% up front.
  export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
  backend="$("$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo none)"
  cuda="$("$PY" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null || echo none)"
  if [[ $backend != gpu || $cuda != True ]]; then
    echo "gpu_suite.sh: error: JAX backend is '$backend' and torch.cuda.is_available() is '$cuda'; expected a GPU" \
         "for both (pip install -e '.[dev]' 'jax[cuda12]' and a CUDA build of torch), or run with --tiny" >&2
    exit 2
  fi
  SIZE=(--config "$ROOT/configs/roberta_base.yaml" --seq 512 --batch "$BATCH" --steps 20 --rounds 5 --warmup 5
        --attention-impl cudnn)
fi

# Both layouts when the config knows model.scan_layers: the main row scanned, one more row unrolled.
LAYOUT=()
if "$PY" -c 'import sys; from xlplastic.config import ModelConfig; sys.exit("scan_layers" not in ModelConfig.model_fields)'; then
  LAYOUT=(--set model.scan_layers=true --variant unrolled model.scan_layers=false)
fi

# Dropout 0.1 on hidden states, none on attention probabilities: both sides then run fused attention
# (cuDNN through jax.nn.dot_product_attention, SDPA's flash kernel); one step per call (train's default).
CMD=("$PY" -m xlplastic.cli bench train "${SIZE[@]}" --dtype bfloat16 --dropout 0.1 --attention-dropout 0
     --steps-per-call 1 --peak datasheet "${LAYOUT[@]}" "${EXTRA[@]}" --json "$OUT")
echo "+ ${CMD[*]}"
"${CMD[@]}"

# The suite's own record in the same file: mode, command, goals and whether they are met.
"$PY" - "$OUT" "$MODE" "${CMD[*]}" <<'EOF'
import json, sys
path, mode, command = sys.argv[1:4]
r = json.load(open(path))
mfu, ratio = r.get("xlplastic_mfu"), r.get("ratio")
r["suite"] = {
    "name": "gpu_suite", "mode": mode, "command": command,
    "goals": {"xlplastic_mfu_min": 0.55, "ratio_min": 2.0, "on": "H100/H200, RoBERTa-base, seq 512, bf16"},
    "mfu_goal_met": None if mfu is None or mode != "gpu" else mfu >= 0.55,
    "ratio_goal_met": None if ratio is None or mode != "gpu" else ratio >= 2.0,
    "compile_s_by_layout": {("scanned" if row["scan_layers"] else "unrolled"): row["compile_s"]
                            for row in r["rows"] if row.get("scan_layers") is not None},
}
json.dump(r, open(path, "w"), indent=2)
print(f"gpu_suite ({mode}): xlplastic MFU {mfu}, ratio {ratio}, compile s {r['compile_s']}; wrote {path}")
EOF
