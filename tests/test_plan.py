"""`xlplastic plan`: topology names, the roofline and report arithmetic, and the whole command.

The command runs twice over: on `cpu-N` (this host's CPU devices, in this process: the same code path as a
TPU plan, minus libtpu) and, when the `tpu` extra is installed (libtpu, or TPU_LIBRARY_PATH), for real TPU
topologies in a subprocess, so that libtpu is never loaded into the suite's own process. No test probes
for a TPU: whether libtpu is present is a file lookup.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import cli_env
from xlplastic import cli
from xlplastic.bench.train_bench import flops_per_token
from xlplastic.config import load_config
from xlplastic.errors import UserError
from xlplastic.plan import (CHIPS, GiB, collective_bytes, libtpu_path, model_flops_per_step, parse_oom,
                            parse_topology, roofline, topology_names)

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
# The benchmark model of docs/benchmarks.md (`xlplastic bench train` defaults): 4 layers, d=256, 4 heads,
# FFN 1024, vocabulary 8000, batch 16 x 128, float32, dropout 0.1.
BENCH_MODEL = ["--set", "model.preset=null", "--set", "model.num_layers=4", "--set", "model.hidden_size=256",
               "--set", "model.num_heads=4", "--set", "model.mlp_dim=1024", "--set", "model.vocab_size=8000",
               "--set", "model.max_positions=514", "--set", "data.seq_len=128", "--set", "train.batch_size=16",
               "--set", "model.dtype=float32", "--set", "model.dropout=0.1", "--set", "model.attention_dropout=0.1"]

LIBTPU = libtpu_path()
needs_libtpu = pytest.mark.skipif(
    LIBTPU is None, reason="the `tpu` extra is not installed (libtpu): pip install -e '.[tpu]' -c constraints.txt, "
    "or set TPU_LIBRARY_PATH=/path/to/libtpu.so; the cpu-N tests cover the rest of `plan`")


# ---------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("name, chips, shape, libtpu, wrap", [
    ("v5e-256", 256, "16x16", "v5e:16x16", (True, True, False)),
    ("v5e-32", 32, "4x8", "v5e:4x8", (False, False, False)),
    ("v5litepod-4", 4, "2x2", "v5e:2x2", (False, False, False)),
    ("v5p-128", 64, "4x4x4", "v5:4x4x4", (True, True, True)),  # v5p names count TensorCores: 2 per chip
    ("v5p-8", 4, "2x2x1", "v5:2x2x1", (False, False, False)),
    ("v4-8", 4, "2x2x1", "v4:2x2x1", (False, False, False)),
    ("v4-4096", 2048, "8x16x16", "v4:8x16x16", (True, True, True)),
    ("v6e-128", 128, "8x16", "v6e:8x16", (False, True, False)),
    ("v6e-1", 1, "1x1", "v6e:1x1", (False, False, False)),
])
def test_topology_names_as_maxtext_spells_them(name, chips, shape, libtpu, wrap):
    t = parse_topology(name)
    assert (t.chips, t.shape, t.libtpu_name, t.wrap, t.devices) == (chips, shape, libtpu, wrap, chips)
    assert t.chip_config_name == ("megacore" if name.startswith(("v4", "v5p")) else "default")
    assert t.chips_per_host_bounds == ((1, 1, 1) if chips == 1 else (2, 2, 1))
    assert parse_topology(name, slices=4).devices == 4 * chips


def test_topology_errors_and_cpu():
    assert parse_topology("cpu-8").chip is None and parse_topology("cpu-8").devices == 8
    for bad, words in [("v5p-100", "TensorCores"), ("v5e-2", "chips"), ("v7x-8", "unknown TPU generation"),
                       ("v5e", "GENERATION-SIZE"), ("v4-8192", "TensorCores")]:
        with pytest.raises(UserError, match=words):
            parse_topology(bad)
    with pytest.raises(UserError, match="positive"):
        parse_topology("v5e-8", slices=0)
    names = topology_names()
    assert {"v4-8", "v5p-128", "v5e-256", "v6e-64"} <= set(names)
    assert all(parse_topology(n).chips >= 1 for n in names)


def test_chip_table():
    """The vendors' published figures (docs/plan.md cites the pages)."""
    assert CHIPS["v5e"].peak_bf16_flops == 197e12 and CHIPS["v5e"].hbm_bytes == 16 * GiB
    assert CHIPS["v5p"].peak_bf16_flops == 459e12 and CHIPS["v5p"].hbm_bytes == 95 * GiB
    assert CHIPS["v4"].peak_bf16_flops == 275e12 and CHIPS["v6e"].peak_bf16_flops == 918e12
    assert all(c.source.startswith("https://cloud.google.com/tpu/docs/") for c in CHIPS.values())


# ---------------------------------------------------------------------------------------------- arithmetic


def test_parse_oom_reads_xla_message():
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
           "(80.00G) exceeds available HBM (15.75G).")
    assert parse_oom(msg) == (int(80 * GiB), int(15.75 * GiB))
    assert parse_oom("RESOURCE_EXHAUSTED: something else") == (None, None)


def test_collective_bytes_from_hlo():
    hlo = "\n".join([
        "  %all-reduce.1 = f32[1024,768]{1,0} all-reduce(f32[1024,768]{1,0} %p), replica_groups={}",
        "  %ag = (bf16[8,128]{1,0}, bf16[64,128]{1,0}) all-gather-start(bf16[8,128]{1,0} %x), dimensions={0}",
        "  %agd = bf16[64,128]{1,0} all-gather-done(%ag)",
        "  %rs = f32[16]{0} reduce-scatter(f32[128]{0} %y), dimensions={0}",
        "  %add = f32[4]{0} add(f32[4]{0} %a, f32[4]{0} %b)",
    ])
    assert collective_bytes(hlo) == {"all-reduce": 1024 * 768 * 4, "all-gather": 64 * 128 * 2, "reduce-scatter": 64}


def test_roofline():
    chip = CHIPS["v5e"]
    r = roofline(197e12, 819e9 / 2, chip, comm_bytes_per_chip=400e9)
    assert r["compute_s"] == pytest.approx(1.0) and r["memory_s"] == pytest.approx(0.5)
    assert r["step_s"] == pytest.approx(1.0) and r["bound"] == "compute" and r["ici_s"] == pytest.approx(1.0)
    r = roofline(1e12, 819e9, chip)
    assert r["bound"] == "HBM bandwidth" and r["step_s"] == pytest.approx(1.0)
    assert roofline(1e12, 1e9, None)["step_s"] is None  # a CPU host has no published peak


def test_model_flops_formula_is_the_documented_one():
    cfg = load_config(ROOT / "configs" / "roberta_base.yaml")
    f = model_flops_per_step(cfg, 50000)
    per_token = flops_per_token(12, 768, 3072, 50000, 512, 0.15)["total"]
    assert f["tokens"] == 2048 * 512
    assert f["model"] == pytest.approx(per_token * 2048 * 512)
    executed = flops_per_token(12, 768, 3072, 50000, 512, math.ceil(0.15 * 512) / 512)
    # roberta_base.yaml has model.remat: dots: the attention products are re-run in the backward pass
    assert f["executed"] == pytest.approx((executed["total"] + executed["attention"] / 3) * 2048 * 512)
    f_none = model_flops_per_step(load_config(ROOT / "configs" / "roberta_base.yaml", ["model.remat=none"]), 50000)
    assert f_none["executed"] == pytest.approx(executed["total"] * 2048 * 512)


# ---------------------------------------------------------------------------------------------- cpu-N, in process


def test_plan_cpu_prints_memory_flops_and_shardings(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert cli.main(["plan", TINY, "--topology", "cpu-2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for words in ("mesh data=2 x fsdp=1 x tensor=1", "parameters", "optimizer state", "temporaries", "total",
                  "fits", "FLOPs per train step", "XLA / executed", "token_embed", "P('tensor', 'fsdp')",
                  "roofline: n/a"):
        assert words in text, words
    p = json.loads(out.read_text())
    tr = p["steps"]["train"]
    assert p["fits"] and p["devices"] == 2 and tr["fits"] and p["steps"]["eval"]["fits"]
    mem = tr["memory_per_device"]
    assert mem["total"] >= mem["params"] + mem["opt_state"] + mem["temporaries"]
    assert tr["flops_per_step"] == pytest.approx(2 * tr["flops_per_device"])
    assert tr["collective_bytes_per_device"].get("all-reduce", 0) > 0  # data parallelism: gradients are summed


def test_plan_benchmark_model_flops_within_10_percent_of_formula(tmp_path):
    """XLA's FLOPs for the benchmark model agree with docs/benchmarks.md's formula (executed head)."""
    out = tmp_path / "bench.json"
    assert cli.main(["plan", TINY, "--topology", "cpu-1", "--no-eval", "--json", str(out), *BENCH_MODEL]) == 0
    ratio = json.loads(out.read_text())["steps"]["train"]["flops_vs_formula"]
    assert 0.9 <= ratio <= 1.1, ratio


def test_plan_grad_accum_counts_the_loop_body_accum_times(tmp_path):
    """XLA's cost analysis counts a loop body once; the plan scales the micro-batch loop by grad_accum."""
    flops = []
    for accum in (1, 2):
        out = tmp_path / f"a{accum}.json"
        assert cli.main(["plan", TINY, "--topology", "cpu-1", "--no-eval", "--json", str(out),
                         "--set", f"train.grad_accum={accum}"]) == 0
        tr = json.loads(out.read_text())["steps"]["train"]
        assert tr["xla_loop_scale"] == accum
        flops.append(tr["flops_per_step"])
    assert flops[1] == pytest.approx(flops[0], rel=0.03)


def test_plan_cpu_does_not_fit_exits_3_with_one_line(tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = cli.main(["plan", TINY, "--topology", "cpu-2", "--no-eval", "--hbm-gib", "0.001", "--json", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3
    assert len(err) == 1 and err[0].startswith("xlplastic: error: tiny does not fit on cpu-2: the train step needs ")
    assert "per device, a device has 1.02 MiB (1073741 bytes)" in err[0]
    assert json.loads(out.read_text())["fits"] is False


def test_plan_bad_inputs_exit_2(capsys):
    assert cli.main(["plan", TINY, "--topology", "v9-8"]) == 2
    assert cli.main(["plan", TINY, "--topology", "cpu-3"]) == 2  # batch 8 does not divide over 3 devices
    err = capsys.readouterr().err.strip().splitlines()
    assert "unknown TPU generation" in err[0] and "not divisible" in err[1]


# ---------------------------------------------------------------------------------------------- TPU, in a subprocess


def _plan_tpu(tmp_path_factory, tmp_path, *args, timeout=300):
    out = tmp_path / "plan.json"
    cmd = [sys.executable, "-m", "xlplastic.cli", "plan", *args, "--json", str(out)]
    env = cli_env(tmp_path_factory, TPU_LIBRARY_PATH=LIBTPU)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return p, (json.loads(out.read_text()) if out.is_file() else None)


@needs_libtpu
def test_plan_tpu_roberta_base_v5e_32(tmp_path_factory, tmp_path):
    """configs/roberta_base.yaml on v5e-32, with two of its 12 layers, batch 256 x 128 and the train step
    only, so that the compile takes ~25 s, not minutes (docs/plan.md has the full-size plans): memory,
    FLOPs, roofline, MFU, and nothing on stderr."""
    p, plan = _plan_tpu(tmp_path_factory, tmp_path, str(ROOT / "configs" / "roberta_base.yaml"), "--topology", "v5e-32",
                        "--no-eval", "--set", "model.num_layers=2", "--set", "train.batch_size=256",
                        "--set", "data.seq_len=128")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.strip() == "", p.stderr[-3000:]  # libtpu's start-up warnings are kept out of the output
    for words in ("32 TPU v5e chips (4x8)", "mesh data=32 x fsdp=1 x tensor=1", "HBM (TPU v5e)", "temporaries",
                  "FLOPs per train step", "roofline per step", "MFU at the roofline step time"):
        assert words in p.stdout, words
    tr = plan["steps"]["train"]
    assert plan["device_kind"].startswith("TPU v5") and plan["devices"] == 32 and plan["fits"]
    assert 0 < tr["memory_per_device"]["total"] < 16 * GiB
    assert 0.9 <= tr["flops_vs_formula"] <= 1.1
    assert 0 < tr["mfu_at_roofline"] <= 1 and tr["collective_bytes_per_device"]


@needs_libtpu
def test_plan_tpu_benchmark_model_flops_within_10_percent(tmp_path_factory, tmp_path):
    p, plan = _plan_tpu(tmp_path_factory, tmp_path, TINY, "--topology", "v5e-4", "--no-eval", *BENCH_MODEL)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 0.9 <= plan["steps"]["train"]["flops_vs_formula"] <= 1.1


@needs_libtpu
def test_plan_tpu_oversized_exits_3(tmp_path_factory, tmp_path):
    """A batch far too big for v5e-4: XLA's RESOURCE_EXHAUSTED becomes one line and exit status 3."""
    p, plan = _plan_tpu(tmp_path_factory, tmp_path, TINY, "--topology", "v5e-4", "--no-eval",
                        "--set", "train.batch_size=1048576")
    assert p.returncode == 3, p.stderr[-3000:]
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xlplastic: error: tiny does not fit on v5e-4: the train step needs ")
    assert "exceeds available HBM" in err[0] and "a TPU v5e chip has 15.75 GiB" in err[0]
    assert plan["fits"] is False and plan["needed_per_device"] > plan["memory_available_per_device"]


@needs_libtpu
def test_plan_tpu_two_slices_over_dcn(tmp_path_factory, tmp_path):
    """--slices 2: 2 x v5e-4, the data axis spanning both slices (a hybrid ICI x DCN mesh)."""
    p, plan = _plan_tpu(tmp_path_factory, tmp_path, TINY, "--topology", "v5e-4", "--slices", "2", "--no-eval")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "4 TPU v5e chips (2x2) x 2 slices (DCN), mesh data=8 x fsdp=1 x tensor=1" in p.stdout
    assert plan["devices"] == 8 and plan["slices"] == 2 and plan["fits"]
