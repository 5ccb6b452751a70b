"""`xlplastic run CONFIG.yaml [--set key=value ...] [--run-dir DIR]`, `xlplastic analyze RUN|hf:DIR ...`,
`xlplastic export RUN --hf DIR` and `xlplastic bench ...`.

User errors (bad config, data, checkpoint, NaN loss) print one line `xlplastic: error: ...` and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import errno

from xlplastic.errors import UserError
from xlplastic.paths import as_path, is_url

WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES)


def _distributed_init(args) -> None:
    """Starts jax.distributed when launched as several processes (explicit flags, env, SLURM or TPU pod)."""
    import jax

    coord = args.coordinator or os.environ.get("XLPLASTIC_COORDINATOR")
    nproc = args.num_processes or int(os.environ.get("XLPLASTIC_NUM_PROCESSES", "0") or 0)
    pid = args.process_id if args.process_id is not None else os.environ.get("XLPLASTIC_PROCESS_ID")
    if coord and nproc and nproc > 1:
        if pid is None or not str(pid).strip().isdigit() or not 0 <= int(pid) < nproc:
            raise UserError(f"--process-id (or XLPLASTIC_PROCESS_ID) is {pid!r} with --coordinator and --num-processes "
                            f"{nproc}; expected this process's index, 0..{nproc - 1}, a different one on each process")
        if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coord, num_processes=nproc, process_id=int(pid))
    elif args.distributed or os.environ.get("XLPLASTIC_DISTRIBUTED") == "auto":
        jax.distributed.initialize()  # auto-detection: Cloud TPU pods, SLURM, Open MPI


_CACHE_SAID = False  # the cache line is printed once per process


def _process_id_hint(args) -> int | None:
    """This process's index when the launch says it before jax.distributed starts (--process-id or
    XLPLASTIC_PROCESS_ID); None when unknown (one process, or cluster auto-detection)."""
    pid = getattr(args, "process_id", None)
    if pid is None:
        env = os.environ.get("XLPLASTIC_PROCESS_ID", "")
        pid = int(env) if env.strip().isdigit() else None
    return pid


def _compilation_cache(args=None) -> None:
    """Persistent XLA compilation cache (a pipeline compiles the same programs in several stages, and
    reruns compile nothing); JAX_COMPILATION_CACHE_DIR overrides the place, an empty value turns it off.

    Says where it is once per process, on stdout: this runs before jax.distributed starts, so the
    process index is only known from --process-id / XLPLASTIC_PROCESS_ID (other processes stay quiet);
    with cluster auto-detection (--distributed) every process prints the line."""
    global _CACHE_SAID
    import jax

    where = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "xlplastic" / "jax-compile"))
    if where:
        jax.config.update("jax_compilation_cache_dir", where)
        if not _CACHE_SAID and _process_id_hint(args) in (None, 0):
            print(f"xlplastic: XLA compilation cache: {where} (the first run compiles; later runs reuse it)", flush=True)
        _CACHE_SAID = True


def _quiet_after_done() -> None:
    """After a completed run nothing should follow its last line (`done: ...`): absl (Orbax logs
    through it) and JAX log records of WARNING and ERROR level emitted while the interpreter shuts down
    (thread, client and distributed teardown) are dropped; only CRITICAL passes. Everything the run
    writes is complete before `done:` (checkpoints are waited for and closed), so nothing of the run's
    own is hidden. The streams are flushed first."""
    import logging

    for name in ("absl", "orbax", "jax"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if "absl.logging" in sys.modules:
        sys.modules["absl.logging"].set_verbosity("fatal")
    sys.stdout.flush()
    sys.stderr.flush()


def _dispatch(cfg, run_dir: Path, args):
    if cfg.pipeline is not None:  # the relearning pipeline: stages over a sweep
        from xlplastic.stages import run_pipeline

        return run_pipeline(cfg, run_dir)
    if cfg.task is not None:  # fine-tune (or, with train.steps 0, only evaluate) a task head
        from xlplastic.finetune import run_task

        return run_task(cfg, run_dir, allow_change=tuple(args.allow_change))
    # masked-LM pretraining (or language adaptation, with init/trainable set)
    from xlplastic.run import run
    from xlplastic.stages import materialize_lab

    return run(materialize_lab(cfg, run_dir), run_dir, allow_change=tuple(args.allow_change))


def _cmd_run(args) -> int:
    from xlplastic.config import load_config

    _compilation_cache(args)
    cfg = load_config(args.config, args.set)
    _distributed_init(args)
    from xlplastic.runtime import check_run_dir, remove_if_untrained

    wanted = as_path(args.run_dir) if args.run_dir else Path("runs") / cfg.name
    if is_url(wanted):
        check_run_dir(wanted)  # an unreachable or unwritable bucket is one line before anything asks it more
    created = not wanted.exists()
    if cfg.pipeline is not None:  # every stage's config, before the run folder exists
        from xlplastic.stages import check_pipeline

        check_pipeline(cfg, wanted)
    run_dir = check_run_dir(wanted)  # before any work
    try:
        result = _dispatch(cfg, run_dir, args)
    except UserError as e:
        from xlplastic.loop import TrainingDiverged

        # A first start that failed on its input leaves no half-made run folder behind (a diverged run
        # or a failed write keeps its folder: its metrics say what happened).
        if created and getattr(e, "exit_code", 2) == 2 and not isinstance(e, TrainingDiverged):
            remove_if_untrained(run_dir)
        raise
    _quiet_after_done()
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
    if args.config or not str(args.runs[0]).startswith("hf:"):
        source = args.config or models[0].run_dir / "config.yaml"
        cfg = load_config(source, args.set)
    else:  # an HF model has no config.yaml: the analysis section comes from --set alone
        from xlplastic.config import apply_overrides, validate

        cfg = validate(apply_overrides({}, args.set), source="--set", run=True)
    acfg = analysis_section(cfg)
    data_dir = cfg.data.data_dir or models[0].cfg.data.data_dir
    out = as_path(args.run_dir) if args.run_dir else Path("runs") / ("analysis-" + "-".join(m.name for m in models))
    analyze(models, acfg, out, data_dir)
    print(f"analysis: results in {out / 'results.json'}, report in {out / 'report.md'}", flush=True)
    return 0


def _cmd_export(args) -> int:
    """A run's encoder (or an hf:DIR model) as a Hugging Face ...ForMaskedLM folder (docs/hf.md)."""
    from xlplastic.hf_export import export_run

    _compilation_cache()
    export_run(args.run, args.hf, args.arch)
    return 0


def _cmd_prepare(args) -> int:
    """Tokenize and pack a config's corpora into its cache ahead of `run`, on every core and process."""
    from xlplastic.config import load_config

    cfg = load_config(args.config, args.set)
    _distributed_init(args)
    from xlplastic.prepare import prepare

    prepare(cfg, as_path(args.run_dir) if args.run_dir else Path("runs") / cfg.name, workers=args.workers)
    return 0


BENCHMARKS = {"train": "train_bench", "memory": "memory_bench", "analysis": "analysis_bench", "compile": "compile_bench",
              "data": "input_bench"}


def _cmd_bench(args) -> int:
    """Runs `xlplastic.bench.<what>_bench.main(options)`; `--help` shows that benchmark's own options."""
    import importlib

    from xlplastic.bench.common import check_json_path

    if args.what not in BENCHMARKS:
        raise UserError(f"unknown benchmark {args.what!r}; expected one of: {', '.join(BENCHMARKS)}")
    if args.help:
        rest = ["--help"]
    else:
        check_json_path(args.json)  # before the benchmark spends minutes, not when it writes its figures
        rest = list(args.rest) + (["--json", args.json] if args.json else [])
    bench = importlib.import_module(f"xlplastic.bench.{BENCHMARKS[args.what]}")
    try:
        return int(bench.main(rest) or 0)
    except SystemExit as e:  # the benchmark's argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


def _cmd_plan(args) -> int:
    """AOT-compile the config's steps for a TPU topology on this host: memory, FLOPs, roofline (docs/plan.md)."""
    from xlplastic.plan import run_plan

    return run_plan(args.config, args.topology, slices=args.slices, overrides=args.set, json_path=args.json,
                    with_eval=not args.no_eval, hbm_gib=args.hbm_gib)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlplastic", description="Masked-LM pretraining for cross-lingual plasticity research")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run an experiment config")
    r.add_argument("config", help="YAML config (may use `base:` inheritance)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.steps=100")
    r.add_argument("--run-dir", help="output folder (default runs/<name>); rerunning resumes from its checkpoints")
    r.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="resume a run whose config differs in KEY on purpose (only train.steps: a longer run); "
                   "any other change to what a run computes is refused (docs/config.md#run-directories)")
    r.add_argument("--coordinator", metavar="HOST:PORT",
                   help="jax.distributed coordinator address, the same on every process (multi-process); "
                   "env XLPLASTIC_COORDINATOR")
    r.add_argument("--num-processes", type=int, metavar="N",
                   help="how many processes the run has in all (with --coordinator and --process-id; "
                   "distributed only when N > 1); env XLPLASTIC_NUM_PROCESSES")
    r.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() with cluster auto-detection (TPU pod, SLURM); "
                   "env XLPLASTIC_DISTRIBUTED=auto")
    r.add_argument("--process-id", type=int, metavar="I",
                   help="this process's index, 0..N-1, different on each process; process 0 writes the outputs "
                   "(with --coordinator and --num-processes); env XLPLASTIC_PROCESS_ID")
    r.set_defaults(fn=_cmd_run)
    pr = sub.add_parser("prepare", help="tokenize and pack a config's corpora into the data cache ahead of `run`, in "
                        "parallel (all cores; all processes when launched like a multi-process run)")
    pr.add_argument("config", help="YAML config of a masked-LM run")
    pr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, as for run")
    pr.add_argument("--run-dir", help="the run folder `run` will use (default runs/<name>): its tokenizer, and its "
                    "data_cache unless data.cache_dir is set")
    pr.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: the CPU count)")
    for flag in ("--coordinator", "--num-processes", "--distributed", "--process-id"):  # the same launch as `run`
        action = next(x for x in r._actions if flag in x.option_strings)
        pr._add_action(action)
    pr.set_defaults(fn=_cmd_prepare)
    a = sub.add_parser("analyze", help="cross-lingual structure of one or two checkpoints: CKA, retrieval, word translation")
    a.add_argument("runs", nargs="+", metavar="RUN", help="run directories (their latest checkpoint) or hf:DIR (a Hugging "
                   "Face BERT/RoBERTa/XLM-R folder); two = compare models")
    a.add_argument("--config", help="YAML with an `analysis:` section (default: the first run's config.yaml; for hf:DIR, "
                   "only the --set keys)")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. analysis.layers=[0,4]")
    a.add_argument("--name", action="append", help="a model's name in the results (once per run)")
    a.add_argument("--run-dir", help="output folder for results.json, figures and report.md")
    a.set_defaults(fn=_cmd_analyze)
    e = sub.add_parser("export", help="a run's encoder as a Hugging Face ...ForMaskedLM folder (config.json, "
                       "model.safetensors, tokenizer)")
    e.add_argument("run", metavar="RUN", help="run directory (its latest checkpoint), or hf:DIR")
    e.add_argument("--hf", required=True, metavar="DIR", help="output folder")
    e.add_argument("--arch", choices=["bert", "roberta", "xlm-roberta"],
                   help="HF architecture (default: roberta for <s>-style tokenizers and imported RoBERTa, else bert)")
    e.set_defaults(fn=_cmd_export)
    b = sub.add_parser(
        "bench",
        help="benchmarks: `train` (tokens/s vs HF PyTorch), `memory` (FSDP per-device state bytes), "
        "`analysis` (CKA and CSLS kernels vs NumPy), `data` (cache preparation tokens/s and sampler time per "
        "batch vs a TPU step)",
        description="Options other than --json go to the benchmark, e.g. `xlplastic bench train --json out.json "
        "--layers 2`; `xlplastic bench train --help` lists the benchmark's own options.",
        add_help=False,  # -h after a benchmark name is that benchmark's help (handled in main)
    )
    b.add_argument("-h", "--help", action="store_true",
                   help="show this help; after a benchmark name, the benchmark's own options")
    b.add_argument("what", nargs="?", choices=list(BENCHMARKS), help="which benchmark")
    b.add_argument("--json", metavar="PATH", help="write the figures to this JSON file (checked before the run)")
    b.set_defaults(fn=_cmd_bench, parser=b)
    pl = sub.add_parser("plan", help="will a config fit a TPU slice? compile its steps for the topology on this host "
                        "(per-chip memory, FLOPs, roofline step time and MFU, parameter shardings); exit 3 if it does not fit")
    pl.add_argument("config", help="YAML config (may use `base:` inheritance)")
    pl.add_argument("--topology", required=True, metavar="NAME",
                    help="TPU slice as MaxText names it: v5e-32, v5e-256, v5p-128 (TensorCores: 64 chips), v4-8, v6e-64; "
                    "or cpu-N (N host CPU devices, no libtpu needed)")
    pl.add_argument("--slices", type=int, default=1, metavar="N", help="N slices joined over DCN (the data axis spans them)")
    pl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.batch_size=512")
    pl.add_argument("--json", metavar="PATH", help="also write the plan to this JSON file")
    pl.add_argument("--no-eval", action="store_true", help="compile only the train step (not the eval step)")
    pl.add_argument("--hbm-gib", type=float, metavar="GIB",
                    help="memory per device to fit in (default: the chip's HBM; for cpu-N, host RAM / N)")
    pl.set_defaults(fn=_cmd_plan)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        if args.what is None:
            if args.help:
                args.parser.print_help()
                return 0
            args.parser.error("the following arguments are required: what")
        args.rest = [a for a in extra if a != "--"]  # benchmark options pass through
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.fn(args) or 0)
    except UserError as e:
        print(f"xlplastic: error: {e}", file=sys.stderr, flush=True)
        return getattr(e, "exit_code", 2)  # 2, or a fault's own status (3: a checkpoint could not be written)
    except OSError as e:  # a write the run could not make (full disk, read-only place, quota): one line too
        if e.errno not in WRITE_ERRNOS:
            raise
        print(f"xlplastic: error: {e.filename or 'a file'}: {e.strerror}; expected space and write access there "
              "(rerun the same command once fixed: the run resumes from its newest intact checkpoint)", file=sys.stderr, flush=True)
        return 3


if __name__ == "__main__":
    sys.exit(main())
