"""One masked-LM run (pretraining, or language adaptation with `init`/`train.trainable`): its data,
mesh, state and hooks; the step loop itself is loop.py's."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from xlplastic import checkpoint as ckpt_lib
from xlplastic.config import Config, dump_config
from xlplastic.data.pipeline import StepSampler, build_corpora
from xlplastic.data.run_tokenizer import prepare_tokenizer
from xlplastic.data.tokenizers import special_tokens
from xlplastic.errors import UserError
from xlplastic.hf_config import resolve as resolve_hf
from xlplastic.hf_config import uses_hf
from xlplastic.loop import Checkpoints, Hook, RowLogger, every, restore_or_init, train_loop
from xlplastic.metrics import MetricsLog, Progress
from xlplastic.model import num_params
from xlplastic.paths import data_cache_dir
from xlplastic.record import check_rerun, write_config
from xlplastic.runtime import StopRequest, barrier, check_run_dir, is_main, log, sha, write_json
from xlplastic.sharding import check_batch, describe, make_mesh, put_global_batch
from xlplastic.train import Specials, build_trainer, mlm_objective


@dataclass
class RunResult:
    run_dir: Path
    final_step: int
    results: dict[str, Any]
    interrupted: bool = False


def language_token_ids(langs, lang_ids: np.ndarray, num_languages: int, specials: Specials, chunk: int = 4096) -> list[np.ndarray]:
    """Per model language, the sorted non-special token ids its training rows contain (read in chunks
    of rows from the memory maps, so any corpus size fits)."""
    seen: list[set] = [set() for _ in range(num_languages)]
    for packed, l in zip(langs, lang_ids):
        rows = packed.train
        for lo in range(0, len(rows), chunk):
            seen[int(l)].update(np.unique(np.asarray(rows[lo: lo + chunk])).tolist())
    out = [np.array(sorted(s - set(specials.all_ids)), np.int32) for s in seen]
    empty = [i for i, ids in enumerate(out) if len(ids) == 0]
    if empty:
        raise UserError(f"data.random_within_language: language id(s) {empty} have no training tokens; "
                        "expected a corpus for each of the model's languages")
    return out


def run(
    cfg: Config,
    run_dir: str | Path,
    *,
    max_steps: int | None = None,
    stop_at: int | None = None,
    devices: list | None = None,
    allow_change: tuple[str, ...] = (),
) -> RunResult:
    """Trains `cfg.train.steps` steps in `run_dir` (resuming if it holds a checkpoint).

    `stop_at` ends the loop early after that step (with a checkpoint), as a preemption would; `devices`
    restricts the mesh to some of the devices (tests compare 1 and 8 devices in one process).
    """
    cfg = resolve_hf(cfg)  # init.from_hf: the HF model's architecture and tokenizer (hf_config.py)
    run_dir = check_run_dir(run_dir)
    config_text = dump_config(cfg)
    changed = check_rerun(run_dir, config_text, allow_change)
    t_start = time.perf_counter()
    print(  # every process, so a multi-process launch shows that each one joined
        f"xlplastic: process {jax.process_index()}/{jax.process_count()}, "
        f"{jax.local_device_count()} local / {jax.device_count()} global devices ({jax.devices()[0].platform})",
        flush=True,
    )

    # ---- data
    tokenizer = prepare_tokenizer(cfg, run_dir)
    sp = special_tokens(tokenizer)
    specials = Specials(pad=sp.pad, mask=sp.mask, all_ids=tuple(sp.all_ids))
    vocab_size = cfg.model.vocab_size or tokenizer.get_vocab_size()
    if vocab_size < tokenizer.get_vocab_size():
        raise UserError(
            f"model.vocab_size {vocab_size} is smaller than the tokenizer's vocabulary {tokenizer.get_vocab_size()}; "
            "expected model.vocab_size >= tokenizer size (or null to take it from the tokenizer)"
        )
    cache_dir = data_cache_dir(cfg.data.cache_dir, run_dir)
    if is_main():
        langs = build_corpora(cfg.data, tokenizer, cache_dir)
    barrier("corpora")
    if not is_main():
        langs = build_corpora(cfg.data, tokenizer, cache_dir)
    tcfg = cfg.train
    sampler = StepSampler(langs, tcfg.batch_size, tcfg.seed, cfg.data.alpha)
    lang_names = [l.language for l in langs]
    lang_ids = cfg.corpus_language_ids()  # sampler's corpus index -> index into the model's languages

    # ---- mesh and compiled functions
    mesh = make_mesh(cfg.mesh, devices)
    check_batch(tcfg.batch_size, mesh, tcfg.grad_accum)
    log(f"mesh: {describe(mesh)}; languages: {', '.join(f'{l.language} ({l.train.shape[0]} seqs)' for l in langs)}")
    objective = None
    if cfg.data.random_within_language:
        objective = mlm_objective(cfg, vocab_size, specials, language_token_ids(langs, lang_ids, len(cfg.languages()), specials))
    trainer = build_trainer(cfg, mesh, vocab_size, specials, objective)
    probe = None
    if cfg.analysis is not None and cfg.analysis.every > 0:
        from xlplastic.analysis.runner import TrainingProbe

        probe = TrainingProbe(cfg, trainer, tokenizer, cfg.data.data_dir)

    # ---- state: resume or fresh
    ckpt = ckpt_lib.Checkpointer(run_dir / "checkpoints", keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    tok_sha = sha(tokenizer.to_str())
    meta = ckpt_lib.make_meta(vocab_size, cfg.model.model_dump(), tok_sha, {"seed": tcfg.seed, "batch_size": tcfg.batch_size})

    def fresh(params):
        icfg = cfg.init
        if not (icfg.base or icfg.groups_from or icfg.reinit or icfg.map_embeddings):
            return params
        from xlplastic.assemble import compose_params

        return compose_params(icfg, params, trainer, seed=tcfg.seed, pad_id=specials.pad, tokenizer_sha=tok_sha,
                              tokenizer=tokenizer, data_dir=cfg.data.data_dir, log=log)

    state, start, restored = restore_or_init(ckpt, trainer, meta, resume=cfg.checkpoint.resume, fresh_params=fresh,
                                             draw=not uses_hf(cfg.init))
    if is_main():  # only once the run is known to fit this folder: a refused resume keeps the old config.yaml
        write_config(run_dir, config_text, changed, start)
    n_params = num_params(state["params"])
    log(f"model: {n_params / 1e6:.2f}M parameters, vocabulary {vocab_size}, sequence {cfg.data.seq_len}")

    # ---- hooks
    total = tcfg.steps if max_steps is None else min(tcfg.steps, max_steps)
    metrics_log = MetricsLog(run_dir, start, enabled=is_main())
    progress = Progress(total, start, enabled=tcfg.progress and is_main())
    tokens_per_step = tcfg.batch_size * cfg.data.seq_len
    rows = RowLogger(metrics_log, progress, tcfg.log_every, total, tokens_per_step)
    eval_batches = [
        put_global_batch(b, mesh, b["tokens"].shape[0] * jax.process_count()) for b in _eval_sets(sampler, cfg)
    ]
    eval_rows: list[dict] = []

    def evaluate(s: int, state: dict) -> None:
        sums = [trainer.eval_step(state["params"], b) for b in eval_batches]
        host = jax.device_get(sums)
        n = sum(float(h["predictions"]) for h in host)
        loss = sum(float(h["loss_sum"]) for h in host) / max(n, 1.0)
        row = {"step": s, "eval_loss": loss, "eval_accuracy": sum(float(h["correct"]) for h in host) / max(n, 1.0),
               "eval_perplexity": math.exp(min(loss, 50.0))}
        metrics_log.write(row)
        eval_rows.append(row)

    def run_probe(s: int, state: dict) -> None:
        probe_row = probe.dispatch(state["params"], s)  # reads the previous probe, starts this one
        if probe_row:
            metrics_log.write(probe_row)

    hooks = [Hook("evaluate", every(tcfg.eval_every, but=total), evaluate)]
    if probe is not None:
        hooks.append(Hook("probe", probe.due, run_probe))
    checkpoints = Checkpoints(ckpt, meta, every(cfg.checkpoint.every), last=start if restored else None)

    def batch_of(t: int) -> dict[str, np.ndarray]:
        return _batch_arrays(sampler.batch(t - 1, jax.process_index(), jax.process_count()), cfg, lang_ids)

    try:
        with StopRequest() as stop:
            end = train_loop(trainer, state, start=start, total=total, steps_per_call=tcfg.steps_per_call,
                             batch_of=batch_of, global_batch=tcfg.batch_size, hooks=hooks,
                             checkpoints=checkpoints, rows=rows, stop=stop, stop_at=stop_at)
        state = end.state
        if probe is not None and (probe_row := probe.collect()):
            metrics_log.write(probe_row)
        if not end.interrupted:
            checkpoints.save(end.step, state)
            evaluate(end.step, state)
    finally:
        progress.close()
        ckpt.close()  # waits for async saves: a completed checkpoint stays valid even on error
        metrics_log.close()

    if end.interrupted:
        why = f"signal {end.signal}" if end.signal is not None else f"stop_at={stop_at}"
        log(f"stopped at step {end.step} ({why}); checkpoint saved, rerun the same command to resume")
        return RunResult(run_dir, end.step, {"signal": end.signal}, interrupted=True)

    results = _results(cfg, metrics_log.rows, eval_rows, rows.step_times, n_params, tokens_per_step,
                       time.perf_counter() - t_start, lang_names)
    if is_main():
        write_json(run_dir / "results.json", results)
        from xlplastic.report import write_report

        write_report(run_dir, cfg, results, metrics_log.rows)
    # (no loss when resuming a finished run whose metrics.jsonl is gone, or on a process other than 0 that
    # read the file while process 0 rewrote it: formatting None must not crash a finished run)
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    log(f"done: step {end.step}, loss {fmt(results['final']['loss'])}, eval loss {fmt(results['final']['eval_loss'])}; "
        f"results in {run_dir / 'results.json'}, report in {run_dir / 'report.md'}")
    return RunResult(run_dir, end.step, results)


def _batch_arrays(local: dict[str, np.ndarray], cfg: Config, lang_ids: np.ndarray) -> dict[str, np.ndarray]:
    out = {"tokens": np.asarray(local["tokens"], np.int32)}
    if cfg.batch_has_language:
        out["lang"] = lang_ids[np.asarray(local["lang"])].astype(np.int32)
    return out


def _eval_sets(sampler: StepSampler, cfg: Config) -> list[dict]:
    """Fixed held-out batches: this process's slice of each."""
    sets = sampler.eval_batches(cfg.train.batch_size, cfg.train.eval_batches, jax.process_index(), jax.process_count())
    if not sets:
        raise UserError("no held-out evaluation batch could be formed; expected data.eval_sequences >= 1")
    lang_ids = cfg.corpus_language_ids()
    return [_batch_arrays(b, cfg, lang_ids) for b in sets]


def _results(cfg, rows, eval_rows, step_times, n_params, tokens_per_step, wall, languages) -> dict:
    train_rows = [r for r in rows if "loss" in r]
    last = train_rows[-1] if train_rows else {}
    ev = eval_rows[-1] if eval_rows else {}
    steady = sorted(step_times[1:]) or step_times
    median = steady[len(steady) // 2] if steady else float("nan")
    final = {
        "step": last.get("step"),
        "loss": last.get("loss"),
        "accuracy": last.get("accuracy"),
        "eval_loss": ev.get("eval_loss"),
        "eval_accuracy": ev.get("eval_accuracy"),
        "eval_perplexity": ev.get("eval_perplexity"),
        "median_step_time_s": median,
        "tokens_per_s": tokens_per_step / median if median and median == median else None,
        "wall_time_s": wall,
        "num_params": n_params,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
    }
    lang = "+".join(languages)
    summary = [
        {"model": cfg.name, "stage": "pretrain", "task": "mlm", "language": lang, "metric": m, "value": final[k]}
        for m, k in (("loss", "eval_loss"), ("accuracy", "eval_accuracy"), ("perplexity", "eval_perplexity"))
        if final[k] is not None
    ]
    return {"name": cfg.name, "final": final, "summary": summary, "losses": [r["loss"] for r in train_rows]}
