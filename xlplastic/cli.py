"""`xlplastic run CONFIG.yaml [--set key=value ...] [--run-dir DIR]` and `xlplastic bench ...`.

User errors (bad config, data, checkpoint, NaN loss) print one line `xlplastic: error: ...` and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from xlplastic.errors import UserError


def _distributed_init(args) -> None:
    """Starts jax.distributed when launched as several processes (explicit flags, env, SLURM or TPU pod)."""
    import jax

    coord = args.coordinator or os.environ.get("XLPLASTIC_COORDINATOR")
    nproc = args.num_processes or int(os.environ.get("XLPLASTIC_NUM_PROCESSES", "0") or 0)
    pid = args.process_id if args.process_id is not None else os.environ.get("XLPLASTIC_PROCESS_ID")
    if coord and nproc and nproc > 1:
        if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coord, num_processes=nproc, process_id=int(pid))
    elif args.distributed or os.environ.get("XLPLASTIC_DISTRIBUTED") == "auto":
        jax.distributed.initialize()  # auto-detection: Cloud TPU pods, SLURM, Open MPI


def _compilation_cache() -> None:
    """Persistent XLA compilation cache (a pipeline compiles the same programs in several stages, and
    reruns compile nothing); JAX_COMPILATION_CACHE_DIR overrides the place, an empty value turns it off."""
    import jax

    where = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "xlplastic" / "jax-compile"))
    if where:
        jax.config.update("jax_compilation_cache_dir", where)


def _cmd_run(args) -> int:
    from xlplastic.config import load_config

    _compilation_cache()
    cfg = load_config(args.config, args.set)
    _distributed_init(args)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / cfg.name
    if cfg.pipeline is not None:  # the relearning pipeline: stages over a sweep
        from xlplastic.stages import run_pipeline

        result = run_pipeline(cfg, run_dir)
    elif cfg.task is not None:  # fine-tune (or, with train.steps 0, only evaluate) a task head
        from xlplastic.finetune import run_task

        result = run_task(cfg, run_dir)
    else:  # masked-LM pretraining (or language adaptation, with init/trainable set)
        from xlplastic.run import run
        from xlplastic.stages import materialize_lab

        result = run(materialize_lab(cfg, run_dir.resolve()), run_dir)
    if result.interrupted:
        sig = result.results.get("signal")
        return 128 + int(sig) if sig else 0
    return 0


def _cmd_analyze(args) -> int:
    """CKA, retrieval, word translation and word alignment of one or two checkpoints (docs/analysis.md)."""
    from xlplastic.analysis import reps
    from xlplastic.analysis.runner import analysis_section, analyze
    from xlplastic.config import load_config

    _compilation_cache()
    if not 1 <= len(args.runs) <= 2:
        raise UserError(f"analyze takes one or two run directories, got {len(args.runs)}")
    names = args.name or []
    if len(names) > len(args.runs):
        raise UserError(f"{len(names)} --name values for {len(args.runs)} run(s); expected at most one per run")
    models = [reps.load_model(r, name=names[i] if i < len(names) else None) for i, r in enumerate(args.runs)]
    source = Path(args.config) if args.config else models[0].run_dir / "config.yaml"
    cfg = load_config(source, args.set)
    acfg = analysis_section(cfg)
    data_dir = cfg.data.data_dir or models[0].cfg.data.data_dir
    out = Path(args.run_dir) if args.run_dir else Path("runs") / ("analysis-" + "-".join(m.name for m in models))
    analyze(models, acfg, out, data_dir)
    print(f"analysis: results in {out / 'results.json'}, report in {out / 'report.md'}", flush=True)
    return 0


def _cmd_bench(args) -> int:
    rest = list(args.rest) + (["--json", args.json] if args.json else [])
    if args.what == "train":
        from xlplastic.bench import train_bench

        return train_bench.main(rest)
    if args.what == "memory":
        from xlplastic.bench import memory_bench

        return memory_bench.main(rest)
    if args.what == "analysis":
        from xlplastic.bench import analysis_bench

        return analysis_bench.main(rest)
    raise UserError(f"unknown benchmark {args.what!r}; expected one of: train, memory, analysis")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlplastic", description="Masked-LM pretraining for cross-lingual plasticity research")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run an experiment config")
    r.add_argument("config", help="YAML config (may use `base:` inheritance)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.steps=100")
    r.add_argument("--run-dir", help="output folder (default runs/<name>); rerunning resumes from its checkpoints")
    r.add_argument("--coordinator", help="jax.distributed coordinator host:port (multi-process)")
    r.add_argument("--num-processes", type=int)
    r.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() with cluster auto-detection (TPU pod, SLURM)")
    r.add_argument("--process-id", type=int)
    r.set_defaults(fn=_cmd_run)
    a = sub.add_parser("analyze", help="cross-lingual structure of one or two checkpoints: CKA, retrieval, word translation")
    a.add_argument("runs", nargs="+", metavar="RUN", help="run directories (their latest checkpoint); two = compare models")
    a.add_argument("--config", help="YAML with an `analysis:` section (default: the first run's config.yaml)")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. analysis.layers=[0,4]")
    a.add_argument("--name", action="append", help="a model's name in the results (once per run)")
    a.add_argument("--run-dir", help="output folder for results.json, figures and report.md")
    a.set_defaults(fn=_cmd_analyze)
    b = sub.add_parser(
        "bench",
        help="benchmarks: `train` (tokens/s vs HF PyTorch), `memory` (FSDP per-device state bytes), "
        "`analysis` (CKA and CSLS kernels vs NumPy)",
        description="Options other than --json go to the benchmark, e.g. `xlplastic bench train --json out.json "
        "--layers 2`; see `xlplastic bench train -- --help`.",
    )
    b.add_argument("what", choices=["train", "memory", "analysis"])
    b.add_argument("--json", help="write the figures to this JSON file")
    b.set_defaults(fn=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.rest = [a for a in extra if a != "--"]  # benchmark options pass through
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.fn(args) or 0)
    except UserError as e:
        print(f"xlplastic: error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
