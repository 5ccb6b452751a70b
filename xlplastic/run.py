"""One pretraining run, start to finish: data, mesh, state (fresh or resumed), the step loop, outputs.

The loop is big_vision-style and reads top to bottom. Two rules keep it fast: metrics of step s are
fetched only after step s+1 has been dispatched (no host sync in the hot path), and nothing in the loop
changes shapes or shardings (one compilation). A checkpoint step is the one place the host waits: it
checks that step's loss is finite first, so a NaN never reaches a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from xlplastic import checkpoint as ckpt_lib
from xlplastic.config import Config, dump_config
from xlplastic.data.pipeline import StepSampler, build_corpora
from xlplastic.data.sources import iter_texts
from xlplastic.data.tokenizers import load_tokenizer, special_tokens, train_tokenizer
from xlplastic.data.vocabulary import FILENAME as VOCABULARY_FILE
from xlplastic.errors import UserError
from xlplastic.metrics import MetricsLog, Progress
from xlplastic.model import num_params
from xlplastic.calls import metric_rows, put_batches, run_call, windows
from xlplastic.sharding import check_batch, describe, make_mesh, put_global_batch
from xlplastic.train import Specials, build_trainer, mlm_objective


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the run stopped and kept its last good checkpoint."""


@dataclass
class RunResult:
    run_dir: Path
    final_step: int
    results: dict[str, Any]
    interrupted: bool = False


def is_main() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def log(msg: str) -> None:
    if is_main():
        print(msg, flush=True)


def prepare_tokenizer(cfg: Config, run_dir: Path):
    """Loads `data.tokenizer.path`, else the run's own tokenizer.json / vocabulary.json, else trains it
    (process 0 writes): one tokenizer, or with `per_language` / `anchors: none` a multilingual layout."""
    tcfg = cfg.data.tokenizer
    multi = tcfg.per_language or tcfg.anchors == "none"
    own = run_dir / (VOCABULARY_FILE if multi else "tokenizer.json")
    if tcfg.path:
        path = Path(tcfg.path)
        if not path.is_absolute() and cfg.data.data_dir and not path.exists():
            path = Path(cfg.data.data_dir) / path
        tok = load_tokenizer(path)
        if is_main() and not multi and hasattr(tok, "save") and not own.exists():  # the run folder is a record
            tmp = own.with_suffix(".tmp")
            tok.save(str(tmp))
            tmp.replace(own)
        return tok
    # The settings it was trained with, so a rerun that asks for another tokenizer fails instead of
    # silently resuming with the old one (written before tokenizer.json: that file's presence implies it).
    settings_path = run_dir / "tokenizer.settings.json"
    settings = {k: v for k, v in tcfg.model_dump(mode="json").items() if k != "path"}
    if is_main() and not own.exists():
        _write_json(settings_path, settings)
        if multi:
            _train_vocabulary(cfg, run_dir)
        else:
            texts = (t for c in cfg.data.corpora for t in iter_texts(c, cfg.data.data_dir))
            tok = train_tokenizer(texts, tcfg)
            tmp = own.with_suffix(".tmp")
            tok.save(str(tmp))
            tmp.replace(own)
    barrier("tokenizer")  # every process, always: whether the file exists yet depends on timing
    if settings_path.is_file():
        found = json.loads(settings_path.read_text(encoding="utf-8"))
        for k, v in settings.items():
            if k in found and found[k] != v:
                raise UserError(
                    f"{own}: this run's tokenizer was trained with data.tokenizer.{k}={found[k]!r} but the config asks "
                    f"for {v!r}; expected the same tokenizer settings to resume this run (or a new --run-dir)"
                )
    return load_tokenizer(own)


def _train_vocabulary(cfg: Config, run_dir: Path) -> None:
    """Per-language tokenizers (each on its own language's corpora) or one joint tokenizer, laid out
    as `data.tokenizer.anchors` says, saved as vocabulary.json + tokenizer.<lang>.json."""
    from xlplastic.data.tokenizers import _round_robin
    from xlplastic.data.vocabulary import Vocabulary

    tcfg, dd = cfg.data.tokenizer, cfg.data.data_dir
    langs = cfg.languages()
    bare = [l for l in langs if not any(c.language == l for c in cfg.data.corpora)]
    if bare and tcfg.per_language:
        raise UserError(f"data.tokenizer.per_language: no corpus for language(s) {', '.join(bare)}; "
                        "expected a data.corpora entry for each of the model's languages")
    if tcfg.per_language:
        toks = {l: train_tokenizer(_round_robin([iter_texts(c, dd) for c in cfg.data.corpora if c.language == l]), tcfg)
                for l in langs}
    else:
        joint = train_tokenizer(_round_robin([iter_texts(c, dd) for c in cfg.data.corpora]), tcfg)
        toks = {l: joint for l in langs}
    Vocabulary.build(toks, tcfg.anchors).save(run_dir)


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


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _finite_or_raise(row: dict, last_ckpt: int | None) -> None:
    # The loss of step s is computed with the parameters *before* update s, while a checkpoint at s holds
    # them *after* it: a finite loss alone can let NaN parameters into a checkpoint, so the gradient and
    # the updated parameters' norms are checked too.
    bad = [k for k in ("loss", "grad_norm", "param_norm") if k in row and not math.isfinite(row[k])]
    if bad:
        kept = f"the last good checkpoint is step {last_ckpt}" if last_ckpt is not None else "no checkpoint was written"
        what = ", ".join(f"{k.replace('_', ' ')} is {row[k]}" for k in bad)
        raise TrainingDiverged(
            f"training diverged: {what} at step {row['step']}; stopped, {kept} "
            "(expected finite values: lower train.optimizer.lr or set train.optimizer.clip_norm)"
        )


def run(
    cfg: Config,
    run_dir: str | Path,
    *,
    max_steps: int | None = None,
    stop_at: int | None = None,
    devices: list | None = None,
) -> RunResult:
    """Trains `cfg.train.steps` steps in `run_dir` (resuming if it holds a checkpoint).

    `stop_at` ends the loop early after that step (with a checkpoint), as a preemption would; `devices`
    restricts the mesh to some of the devices (tests compare 1 and 8 devices in one process).
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
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
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir / "data_cache"
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
    meta = ckpt_lib.make_meta(
        vocab_size, cfg.model.model_dump(), _sha(tokenizer.to_str()), {"seed": tcfg.seed, "batch_size": tcfg.batch_size}
    )
    start = ckpt.latest_step() if cfg.checkpoint.resume else None
    if start is not None:
        abstract = ckpt_lib.abstract_like(jax.eval_shape(trainer.init), trainer.state_shardings)
        state = ckpt.restore(start, abstract, meta)
        log(f"resumed from {ckpt.directory / str(start)} (step {start})")
    else:
        state = trainer.init()
        start = 0
        icfg = cfg.init
        if icfg.from_run or icfg.groups_from or icfg.reinit or icfg.map_embeddings:
            from xlplastic.assemble import compose_params

            state["params"] = compose_params(icfg, state["params"], trainer,
                                             seed=tcfg.seed, pad_id=specials.pad, tokenizer_sha=_sha(tokenizer.to_str()),
                                             tokenizer=tokenizer, data_dir=cfg.data.data_dir, log=log)
    if is_main():  # only once the run is known to fit this folder: a refused resume keeps the old config.yaml
        (run_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    n_params = num_params(state["params"])
    log(f"model: {n_params / 1e6:.2f}M parameters, vocabulary {vocab_size}, sequence {cfg.data.seq_len}")

    total = tcfg.steps if max_steps is None else min(tcfg.steps, max_steps)
    metrics_log = MetricsLog(run_dir, start, enabled=is_main())
    progress = Progress(total, start, enabled=tcfg.progress and is_main())
    tokens_per_step = tcfg.batch_size * cfg.data.seq_len
    eval_batches = [
        put_global_batch(b, mesh, b["tokens"].shape[0] * jax.process_count()) for b in _eval_sets(sampler, cfg)
    ]

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    # One process: SIGTERM/SIGINT set a flag read after each step. Several processes must stop at the
    # same step or their collective save deadlocks, so SIGTERM is left to JAX's preemption notifier, which
    # tells every process and agrees on a step (`reached_preemption_sync_point`).
    multi = jax.process_count() > 1
    caught = (signal.SIGINT,) if multi else (signal.SIGTERM, signal.SIGINT)
    old_handlers = {s: signal.signal(s, on_signal) for s in caught}
    last_ckpt = start if start else None
    pending: tuple[int, int, dict] | None = None  # (first step, steps, device metrics) of the last call
    t_prev = time.perf_counter()
    step_times: list[float] = []
    eval_rows: list[dict] = []

    def flush() -> None:
        """Fetches the pending call's metrics (by now computed) and logs one row per step."""
        nonlocal pending, t_prev
        if pending is None:
            return
        first, n, dev_metrics = pending
        pending = None
        host = jax.device_get(dev_metrics)
        now = time.perf_counter()
        dt, t_prev = (now - t_prev) / n, now
        for row in metric_rows(first, n, host):
            s = row["step"]
            step_times.append(dt)
            row.update(step_time_s=dt, tokens_per_s=tokens_per_step / dt if dt > 0 else 0.0)
            _finite_or_raise(row, last_ckpt)
            if s % tcfg.log_every == 0 or s == total:
                metrics_log.write(row)
            progress.update(s, {"loss": row["loss"], "tok/s": row["tokens_per_s"]})

    def evaluate(s: int) -> dict:
        sums = [trainer.eval_step(state["params"], b) for b in eval_batches]
        host = jax.device_get(sums)
        n = sum(float(h["predictions"]) for h in host)
        loss = sum(float(h["loss_sum"]) for h in host) / max(n, 1.0)
        row = {"step": s, "eval_loss": loss, "eval_accuracy": sum(float(h["correct"]) for h in host) / max(n, 1.0),
               "eval_perplexity": math.exp(min(loss, 50.0))}
        metrics_log.write(row)
        eval_rows.append(row)
        return row

    def save(s: int) -> None:
        nonlocal last_ckpt
        ckpt.save(s, state, meta)
        last_ckpt = s

    interrupted = False
    final_step = start
    try:
        with jax.transfer_guard("disallow"):  # any implicit host<->device copy in the loop is a bug
            every, eval_every = cfg.checkpoint.every, tcfg.eval_every

            def needs_host(s: int) -> bool:  # a step after which the loop acts: a call must end there
                return bool((eval_every and s % eval_every == 0) or (every and s % every == 0)
                            or (probe is not None and probe.due(s)) or s == stop_at)

            for first, s in windows(start, total, tcfg.steps_per_call, needs_host):
                n = s - first + 1
                local = [_batch_arrays(sampler.batch(t - 1, jax.process_index(), jax.process_count()), cfg, lang_ids)
                         for t in range(first, s + 1)]
                # An explicit host->device copy; with several processes JAX routes it through a path the
                # "disallow" guard would reject, so it is allowed here and only here.
                with jax.transfer_guard_host_to_device("allow"):
                    batch = put_batches(local, mesh, tcfg.batch_size)
                state, dev_metrics = run_call(trainer, state, batch, n)
                flush()  # the previous call's metrics, read while this one runs
                pending = (first, n, dev_metrics)
                final_step = s
                if multi and _preempted(s):
                    stop["signal"] = signal.SIGTERM
                want_eval = eval_every and s % eval_every == 0 and s != total
                want_ckpt = (every and s % every == 0) or stop["signal"] is not None or s == stop_at
                if want_eval or want_ckpt:
                    flush()
                if want_eval:
                    evaluate(s)
                if probe is not None and probe.due(s):
                    probe_row = probe.dispatch(state["params"], s)  # reads the previous probe, starts this one
                    if probe_row:
                        metrics_log.write(probe_row)
                if want_ckpt and (s != total or stop["signal"] is not None):
                    save(s)
                if stop["signal"] is not None or s == stop_at:
                    interrupted = True
                    break
            flush()
        if probe is not None and (probe_row := probe.collect()):
            metrics_log.write(probe_row)
        if not interrupted:
            if final_step != last_ckpt:
                save(final_step)
            evaluate(final_step)
    finally:
        progress.close()
        ckpt.close()  # waits for async saves: a completed checkpoint stays valid even on error
        metrics_log.close()
        for s_, h in old_handlers.items():
            signal.signal(s_, h)

    if interrupted:
        why = f"signal {stop['signal']}" if stop["signal"] is not None else f"stop_at={stop_at}"
        log(f"stopped at step {final_step} ({why}); checkpoint saved, rerun the same command to resume")
        return RunResult(run_dir, final_step, {"signal": stop["signal"]}, interrupted=True)

    results = _results(cfg, metrics_log.rows, eval_rows, step_times, n_params, tokens_per_step, time.perf_counter() - t_start, lang_names)
    if is_main():
        _write_json(run_dir / "results.json", results)
        from xlplastic.report import write_report

        write_report(run_dir, cfg, results, metrics_log.rows)
    # (no loss when resuming a finished run whose metrics.jsonl is gone, or on a process other than 0 that
    # read the file while process 0 rewrote it: formatting None must not crash a finished run)
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    log(f"done: step {final_step}, loss {fmt(results['final']['loss'])}, eval loss {fmt(results['final']['eval_loss'])}; "
        f"results in {run_dir / 'results.json'}, report in {run_dir / 'report.md'}")
    return RunResult(run_dir, final_step, results)


def _preempted(step: int) -> bool:
    """True on every process at the same step once any of them got SIGTERM (multi-process runs)."""
    from jax.experimental import multihost_utils

    try:
        return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # preemption service disabled (jax_enable_preemption_service=False)
        return False


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


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    tmp.replace(path)
