"""benchmarks/gpu_suite.sh at its tiny CPU size: one JSON with every figure of both sides and both layouts."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from cli_helpers import REPO, cli_env


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_gpu_suite_tiny(tmp_path, tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    from xlplastic.config import ModelConfig

    out = tmp_path / "suite.json"
    env = cli_env(tmp_path_factory, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--tiny", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())

    # both sides trained the same tiny model (configs/tiny.yaml shape) in bf16, on the CPU
    c = r["config"]
    assert (c["layers"], c["hidden"], c["heads"], c["ffn"], c["vocab"], c["seq"]) == (2, 64, 2, 128, 400, 32)
    assert c["dtype"] == "bfloat16" and c["attention_dropout"] == 0.0 and c["dropout"] == 0.1
    assert r["device"]["platform"] == "cpu" and r["pytorch_device"] == "cpu"
    assert r["pytorch_attn_implementation"] == "sdpa" and "bf16 autocast" in r["pytorch_setup"]
    for key in ("xlplastic_tokens_per_s", "pytorch_tokens_per_s", "ratio", "model_flops_per_token",
                "xlplastic_peak_memory_bytes", "pytorch_peak_memory_bytes", "xlplastic_compile_s"):
        assert _positive(r[key]), (key, r[key])
    assert r["ratio"] == pytest.approx(r["xlplastic_tokens_per_s"] / r["pytorch_tokens_per_s"])
    for row in r["rows"]:
        assert math.isfinite(row["final_loss"]) and 0 < row["final_loss"] < 3 * math.log(400), row
    # MFU: in (0, 1] against a data-sheet peak, or null with the reason (a CPU has none)
    for key in ("xlplastic_mfu", "pytorch_mfu"):
        assert r[key] is None or 0 < r[key] <= 1, (key, r[key])
    if r["xlplastic_mfu"] is None:
        assert r["peak_flops"] is None and "no data-sheet" in r["mfu_null_reason"] and "'cpu'" in r["mfu_null_reason"]
    # the record of the run: device, versions, date, the suite's goals (not judged at the tiny size)
    assert r["versions"]["jax"] and r["versions"]["torch"] and r["versions"]["transformers"]
    assert r["date"] and r["device"]["device_kind"]
    s = r["suite"]
    assert s["mode"] == "tiny" and s["goals"] == {"xlplastic_mfu_min": 0.55, "ratio_min": 2.0,
                                                  "on": "H100/H200, RoBERTa-base, seq 512, bf16"}
    assert s["mfu_goal_met"] is None and s["ratio_goal_met"] is None
    # compile time of both layer layouts, from separately compiled rows that agree on the loss
    if "scan_layers" in ModelConfig.model_fields:
        assert set(s["compile_s_by_layout"]) == {"scanned", "unrolled"}
        assert all(_positive(v) for v in s["compile_s_by_layout"].values())
        by_layout = {row["scan_layers"]: row for row in r["rows"] if "compile_s" in row}
        assert by_layout[True]["side"] == "xlplastic" and by_layout[False]["side"] == "xlplastic-unrolled"
        assert _positive(r["xlplastic_unrolled_tokens_per_s"])
        # same initial draws and batches: the layouts' losses agree (bf16 compute: loose tolerance)
        assert by_layout[True]["final_loss"] == pytest.approx(by_layout[False]["final_loss"], abs=2e-2)
    assert "gpu_suite (tiny)" in proc.stdout and "ratio xlplastic / pytorch" in proc.stdout


def test_datasheet_peak_and_bad_changes():
    """The data-sheet table matches JAX's device kinds (specific names first); a CPU has no peak, with the
    reason; a wrong --set key or --variant shape is one UserError line before any work."""
    from xlplastic.bench.train_bench import bench_config, datasheet_peak, parse_args
    from xlplastic.errors import UserError

    assert datasheet_peak("NVIDIA H200")["peak_flops"] == 989e12
    assert datasheet_peak("NVIDIA H100 80GB HBM3")["peak_flops"] == 989e12
    assert datasheet_peak("NVIDIA H100 PCIe")["peak_flops"] == 756e12
    assert datasheet_peak("NVIDIA A100-SXM4-80GB")["peak_flops"] == 312e12
    cpu = datasheet_peak("cpu")
    assert cpu["peak_flops"] is None and "--peak-tflops" in cpu["source"]

    args = parse_args(["--config", str(REPO / "configs" / "roberta_base.yaml"), "--batch", "2"])
    assert (args.layers, args.hidden, args.seq, args.vocab, args.dtype) == (12, 768, 512, 50000, "bfloat16")
    assert bench_config(args, "bfloat16", 1, ["model.attention_dropout=0.0"]).model.attention_dropout == 0.0
    with pytest.raises(UserError, match="model.no_such_key"):
        bench_config(args, "bfloat16", 1, ["model.no_such_key=1"])
    with pytest.raises(UserError, match="expected NAME KEY=VALUE"):
        parse_args(["--variant", "unrolled"])
