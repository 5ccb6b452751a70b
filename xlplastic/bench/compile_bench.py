"""Compile time of the train step, scanned vs unrolled layers (`model.scan_layers`), by depth and target.

Each row is one `xlplastic plan CONFIG --topology T --set model.num_layers=L --set model.scan_layers=S`
in a fresh child process with the persistent compilation cache off, so every figure is a cold compile of
the exact train step a run would compile: on this host's CPU (`cpu-1`) and, with libtpu (the `tpu` extra),
for a TPU slice (AOT, no TPU attached). Besides the compile time it keeps what the plan says the step needs
per chip (temporaries, total) and its FLOPs, so a layout that compiles faster but costs memory or FLOPs shows.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from xlplastic.bench.common import check_json_path, write_json

ROOT = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlplastic bench compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "roberta_base.yaml"), help="the run config to plan")
    p.add_argument("--layers", type=int, nargs="+", default=[12, 24], help="depths to compile")
    p.add_argument("--topology", nargs="+", default=["cpu-1", "v5e-32"],
                   help="targets (`cpu-N`, or TPU names such as v5e-32: need libtpu; skipped with a note without it)")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help="config overrides for every row (default train.batch_size=256: 8 rows per v5e-32 chip, so "
                   "RoBERTa-base fits and the compile is not cut short by running out of memory)")
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def plan_row(config: str, topology: str, layers: int, scan: bool, sets: list[str]) -> dict[str, Any]:
    """One cold compile through `xlplastic plan` in a child process; its --json report, condensed."""
    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false", "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan.json"
        cmd = [sys.executable, "-m", "xlplastic.cli", "plan", config, "--topology", topology, "--no-eval",
               "--json", str(out), "--set", f"model.num_layers={layers}", "--set", f"model.scan_layers={str(scan).lower()}"]
        cmd += [a for s in sets for a in ("--set", s)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if not out.is_file():
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"topology": topology, "layers": layers, "scan_layers": scan, "error": tail[0]}
        rep = json.loads(out.read_text())
    train = rep["steps"]["train"]
    return {"topology": topology, "layers": layers, "scan_layers": scan, "compile_s": train["compile_s"],
            "fits": rep.get("fits"), "flops_per_step": train.get("flops_per_step"),
            "memory_per_device": train.get("memory_per_device"), "exit": p.returncode}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.set = ["train.batch_size=256"] if args.set is None else args.set
    check_json_path(args.json)
    from xlplastic.plan import libtpu_path

    rows, notes = [], []
    for topo in args.topology:
        if not topo.startswith("cpu-") and libtpu_path() is None:
            notes.append(f"{topo}: skipped, libtpu is not installed (pip install -e '.[tpu]')")
            continue
        for layers in args.layers:
            for scan in (False, True):
                r = plan_row(args.config, topo, layers, scan, args.set)
                rows.append(r)
                what = "scanned " if scan else "unrolled"
                print(f"{topo:>8}  {layers:>3} layers  {what}  " + (f"compile {r['compile_s']:7.1f} s" if "compile_s" in r
                                                                    else f"error: {r['error']}"), flush=True)
    for topo in dict.fromkeys(r["topology"] for r in rows):
        for layers in args.layers:
            pair = {r["scan_layers"]: r.get("compile_s") for r in rows if r["topology"] == topo and r["layers"] == layers}
            if pair.get(False) and pair.get(True):
                print(f"{topo:>8}  {layers:>3} layers  unrolled / scanned compile time = {pair[False] / pair[True]:.2f}x")
    for n in notes:
        print(n)
    write_json(args.json, {"benchmark": "compile", "date": _dt.date.today().isoformat(), "host": platform.node(),
                           "cpus": os.cpu_count(), "config": args.config, "sets": args.set, "rows": rows, "notes": notes})
    return 0 if all("compile_s" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
