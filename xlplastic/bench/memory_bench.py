"""FSDP memory: per-device parameter + optimizer-state bytes of the train step on 1 device vs N devices.

The device count is fixed when JAX starts, so each part runs in its own child process with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (CPU devices; the same code measures a GPU/TPU host
when run there with `--no-force-devices`). Each child builds the trainer with mesh `data=1 x fsdp=N x
tensor=1`, compiles the jitted step and reports, per device:

* compiled: the executable's `memory_analysis().argument_size_in_bytes` minus the batch shard's bytes,
  i.e. the donated train state {step, params, opt_state} as the compiled program sees it;
* arrays: the bytes of each state array's shard on each device (`addressable_shards`), the largest
  device's total.

The target is  per-device(N) <= per-device(1) / N * (1 + 5%).  The leaves left whole on every device
(no dimension divisible by the fsdp axis) are listed, largest first.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import subprocess
import sys
from typing import Any

from xlplastic.bench.common import add_model_args, check_json_path, model_config, shape_record, write_json
from xlplastic.groups import path_str


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlplastic bench memory", description=__doc__.split("\n\n")[0])
    add_model_args(p, batch_help="global batch (a multiple of --devices)")
    p.add_argument("--devices", type=int, default=8, help="FSDP devices to compare against one")
    p.add_argument("--tolerance", type=float, default=0.05, help="allowed excess over 1/N")
    p.add_argument("--no-force-devices", action="store_true", help="use the real devices (no XLA_FLAGS host count)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    return p


def measure(args, n: int) -> dict[str, Any]:
    """In this process: compile the step on the first n devices with fsdp=n; per-device state bytes."""
    import jax
    import numpy as np

    from xlplastic.config import Config, DataConfig, MeshConfig, TrainConfig
    from xlplastic.sharding import batch_sharding, make_mesh
    from xlplastic.train import Specials, build_trainer

    devices = jax.devices()[:n]
    if len(devices) < n:
        raise SystemExit(f"memory bench: {n} devices requested, {len(jax.devices())} present")
    cfg = Config(
        name="bench-memory",
        model=model_config(args),
        mesh=MeshConfig(data=1, fsdp=n, tensor=1),
        data=DataConfig(seq_len=args.seq),
        train=TrainConfig(steps=10, batch_size=args.batch),
    )
    mesh = make_mesh(cfg.mesh, devices)
    trainer = build_trainer(cfg, mesh, args.vocab, Specials(pad=1, mask=4, all_ids=(0, 1, 2, 3, 4)))
    state = trainer.init()
    batch = {
        "tokens": jax.device_put(
            np.full((args.batch, args.seq), 5, np.int32), batch_sharding(mesh, 2)
        )
    }
    compiled = trainer.step.lower(state, batch).compile()
    m = compiled.memory_analysis()
    batch_shard_bytes = args.batch // n * args.seq * 4  # int32 tokens, batch split over fsdp
    out: dict[str, Any] = {"devices": n, "mesh": dict(mesh.shape)}
    if m is not None:
        out["compiled_argument_bytes"] = int(m.argument_size_in_bytes)
        out["compiled_state_bytes"] = int(m.argument_size_in_bytes) - batch_shard_bytes
        out["compiled_temp_bytes"] = int(m.temp_size_in_bytes)
        out["compiled_output_bytes"] = int(m.output_size_in_bytes)
        out["compiled_alias_bytes"] = int(m.alias_size_in_bytes)
    per_device: dict[str, int] = {}
    params_per_device: dict[str, int] = {}
    replicated = []
    total = 0
    for path, x in jax.tree_util.tree_leaves_with_path(state):
        total += x.nbytes
        for shard in x.addressable_shards:
            key = str(shard.device.id)
            per_device[key] = per_device.get(key, 0) + shard.data.nbytes
            if path_str(path).startswith("params"):
                params_per_device[key] = params_per_device.get(key, 0) + shard.data.nbytes
        if n > 1 and x.ndim > 0 and x.addressable_shards[0].data.nbytes == x.nbytes:
            replicated.append((path_str(path), tuple(x.shape), int(x.nbytes)))
    out["state_bytes_total"] = int(total)
    out["array_state_bytes_per_device"] = max(per_device.values())
    out["array_param_bytes_per_device"] = max(params_per_device.values())
    replicated.sort(key=lambda r: -r[2])
    out["replicated_leaves"] = [{"leaf": a, "shape": list(s), "bytes": b} for a, s, b in replicated]
    out["replicated_bytes"] = sum(r[2] for r in replicated)
    return out


def _child_env(n: int, force: bool) -> dict[str, str]:
    env = dict(os.environ)
    if force:
        flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).strip()
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
        env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _start_child(argv: list[str], n: int, force: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "xlplastic.bench.memory_bench", *argv, "--child", str(n)]
    return subprocess.Popen(cmd, env=_child_env(n, force), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish_child(proc: subprocess.Popen, n: int) -> dict[str, Any]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"memory bench child ({n} devices) failed:\n{err[-4000:]}")
    line = [ln for ln in out.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    check_json_path(args.json)
    if args.ffn is None:
        args.ffn = 4 * args.hidden
    if args.child is not None:
        print(json.dumps(measure(args, args.child)), flush=True)
        return 0
    passthrough = [a for a in argv]
    # the children do not write the JSON file
    if "--json" in passthrough:
        i = passthrough.index("--json")
        del passthrough[i : i + 2]
    passthrough = [a for a in passthrough if not a.startswith("--json=")]
    force = not args.no_force_devices
    procs = [_start_child(passthrough, 1, force), _start_child(passthrough, args.devices, force)]  # concurrently
    one = _finish_child(procs[0], 1)
    many = _finish_child(procs[1], args.devices)
    n = args.devices

    def compare(key: str) -> dict[str, Any]:
        if key not in one or key not in many:
            return {}
        ideal = one[key] / n
        return {
            "one_device": one[key],
            "per_device": many[key],
            "ideal_per_device": ideal,
            "ratio_to_ideal": many[key] / ideal,
            "meets_target": many[key] <= ideal * (1 + args.tolerance),
        }

    result = {
        "devices": n,
        "config": {
            **shape_record(args),
            "mesh": f"data=1 x fsdp={n} x tensor=1",
        },
        "tolerance": args.tolerance,
        "compiled_state": compare("compiled_state_bytes"),
        "array_state": compare("array_state_bytes_per_device"),
        "array_params": compare("array_param_bytes_per_device"),
        "one_device": one,
        "fsdp": many,
        "date": _dt.date.today().isoformat(),
    }
    result["fsdp_state_bytes_per_device"] = result["compiled_state"].get("per_device", many["array_state_bytes_per_device"])
    result["one_device_state_bytes"] = result["compiled_state"].get("one_device", one["array_state_bytes_per_device"])
    result["ratio_to_ideal"] = result["fsdp_state_bytes_per_device"] / (result["one_device_state_bytes"] / n)
    result["meets_target"] = result["ratio_to_ideal"] <= 1 + args.tolerance

    c = result["config"]
    print(
        f"xlplastic bench memory: L={c['layers']} D={c['hidden']} heads={c['heads']} F={c['ffn']} V={c['vocab']} "
        f"T={c['seq']} B={c['batch']}; 1 device vs {c['mesh']}"
    )
    print(f"{'measure':28s} {'1 device':>12s} {f'{n} dev, each':>14s} {'ideal (1/N)':>12s} {'ratio':>7s}  target")
    for label, key in (
        ("params+opt (compiled args)", "compiled_state"),
        ("params+opt (array shards)", "array_state"),
        ("params only (array shards)", "array_params"),
    ):
        r = result[key]
        if r:
            print(
                f"{label:28s} {r['one_device']:12,d} {r['per_device']:14,d} {r['ideal_per_device']:12,.0f} "
                f"{r['ratio_to_ideal']:7.3f}  {'ok' if r['meets_target'] else 'MISSED'} (<= {1 + args.tolerance:.2f})"
            )
    reps = many["replicated_leaves"]
    print(f"leaves replicated on every device: {len(reps)} ({many['replicated_bytes']:,d} bytes)")
    for r in reps[:8]:
        print(f"  {r['leaf']} {tuple(r['shape'])} {r['bytes']:,d} B")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
