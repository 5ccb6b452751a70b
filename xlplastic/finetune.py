"""A task run: fine-tune an encoder + task head (task adaptation), or only score one (zero-shot evaluation).

Same trainer as pretraining (train.py) with a task objective instead of masked LM, so sharding,
trainable groups, checkpoints and resume behave identically. Batches are a pure function of
(seed, step): example order is a fresh permutation per epoch drawn from (seed, epoch). With
`train.steps: 0` the run only evaluates, which is how an assembled model is scored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xlplastic import checkpoint as ckpt_lib
from xlplastic import model as model_lib
from xlplastic.assemble import compose_params
from xlplastic.config import Config, TaskConfig, dump_config
from xlplastic.data.run_tokenizer import prepare_tokenizer
from xlplastic.data.sources import resolve_path
from xlplastic.data.tokenizers import special_tokens
from xlplastic.data.vocabulary import for_language
from xlplastic.errors import UserError
from xlplastic.hf_config import resolve as resolve_hf
from xlplastic.hf_config import uses_hf
from xlplastic.loop import Checkpoints, RowLogger, every, restore_or_init, train_loop
from xlplastic.metrics import MetricsLog, Progress
from xlplastic.paths import as_path
from xlplastic.record import check_rerun, write_config
from xlplastic.run import RunResult
from xlplastic.runtime import StopRequest, check_run_dir, is_main, local_rows, log, sha, write_json
from xlplastic.sharding import activation_rules, check_batch, make_mesh, put_global_batch, replicated
from xlplastic.tasks import features as feats
from xlplastic.tasks import readers
from xlplastic.tasks.heads import create_head, head_loss, head_predict
from xlplastic.train import Objective, Specials, build_trainer

# Groups a task run trains by default: everything but the token embeddings (frozen, as in the
# relearning pipeline) and the MLM head (unused by a task).
TASK_TRAINABLE = ["position_embedding", "language_embedding", "embedding_norm", "body", "task_head"]


def task_objective(cfg: Config, kind: str, num_labels: int, pad: int, batch_ndims: dict[str, int], eos: int = -1):
    """(Objective, predict(encoder, params, batch)) for a task head stored under params['task_head']."""
    seed = cfg.train.seed
    pooling = cfg.task.pooling if cfg.task is not None else "bos"
    abstract = nnx.eval_shape(lambda: create_head(kind, cfg.model, num_labels, seed, pooling))
    graphdef, abstract_state = nnx.split(abstract, nnx.Param)

    def head_of(params):
        return model_lib.merge(graphdef, abstract_state, params["task_head"])

    def with_pool(batch):
        tokens = batch["tokens"]
        if pooling == "mean":
            return {**batch, "pool_mask": tokens != pad}
        if pooling == "pair":  # `bos A eos eos B eos`: segment = how many eos come before a token
            is_eos = tokens == eos
            seen = jnp.cumsum(is_eos, axis=1) - is_eos
            word = (tokens != pad) & ~is_eos & (jnp.arange(tokens.shape[1]) > 0)
            return {**batch, "pool_a": word & (seen == 0), "pool_b": word & (seen == 2)}
        return batch

    def hidden(encoder, batch, key):
        tokens = batch["tokens"]
        return encoder.encode(tokens, (tokens != pad).sum(-1).astype(jnp.int32), lang_B=batch.get("lang"), dropout_key=key)

    def loss(encoder, params, batch, key):
        k_enc, k_head = jax.random.split(key) if key is not None else (None, None)
        h = hidden(encoder, batch, k_enc)
        loss_sum, count, correct = head_loss(kind, head_of(params), h, with_pool(batch), k_head)
        return loss_sum, (count, correct)

    def extra_params():
        return {"task_head": nnx.to_pure_dict(nnx.state(create_head(kind, cfg.model, num_labels, seed, pooling), nnx.Param))}

    def predict(encoder, params, batch):
        return head_predict(kind, head_of(params), hidden(encoder, batch, None), with_pool(batch))

    objective = Objective(
        batch_ndims=batch_ndims,
        loss=loss,
        extra_params=extra_params,
        extra_axes={"task_head": model_lib.logical_axes(abstract)},
    )
    return objective, predict


def read_split(task: TaskConfig, path: str | None, data_dir: str | None, limit: int | None, hf_split: str | None = None):
    if path is None and task.hf is not None and hf_split is not None:
        hf = dict(task.hf)
        kw = {k: hf.get(k) for k in ("subset", "data_files") if hf.get(k) is not None}
        return readers.load_hf_task(task.kind, hf["name"], split=hf.get("split", hf_split), max_examples=limit,
                                    language=task.language, **kw)
    if path is None:
        raise UserError(f"task `{task.name}`: no training data; expected task.train (a file) or task.hf")
    kind = "classification" if task.kind == "classification" else task.kind
    return readers.read_task(kind, str(resolve_path(path, data_dir)), language=task.language, max_examples=limit)


class _Order:
    """Global example rows of step s: epoch-wise permutations drawn from (seed, epoch)."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch, self.seed = n, batch, seed
        self._perm: tuple[int, np.ndarray] | None = None

    def rows(self, step: int) -> np.ndarray:
        g = np.arange(step * self.batch, (step + 1) * self.batch)
        out = np.empty_like(g)
        for e in np.unique(g // self.n):
            if self._perm is None or self._perm[0] != e:
                self._perm = (int(e), np.random.default_rng([self.seed, int(e)]).permutation(self.n))
            sel = g // self.n == e
            out[sel] = self._perm[1][g[sel] % self.n]
        return out


def run_task(cfg: Config, run_dir: str | Path, *, stage: str = "task_adapt", stop_at: int | None = None,
             devices: list | None = None, allow_change: tuple[str, ...] = ()) -> RunResult:
    """Fine-tunes `cfg.task` for `cfg.train.steps` (0 = evaluate only) and scores every test language."""
    task = cfg.task
    if task is None:
        raise UserError("this run has no `task:` section; expected a task to fine-tune or evaluate")
    cfg = resolve_hf(cfg)  # init.from_hf: the HF model's architecture and tokenizer (hf_config.py)
    run_dir = check_run_dir(run_dir)
    config_text = dump_config(cfg)
    changed = check_rerun(run_dir, config_text, allow_change)
    t0 = time.perf_counter()
    tcfg, dd = cfg.train, cfg.data.data_dir
    tokenizer = prepare_tokenizer(cfg, run_dir)
    sp = special_tokens(tokenizer)
    specials = Specials(pad=sp.pad, mask=sp.mask, all_ids=tuple(sp.all_ids))
    vocab = cfg.model.vocab_size or tokenizer.get_vocab_size()

    labels_file = run_dir / "labels.json"
    base_labels = as_path(cfg.init.from_run or ".") / "labels.json"
    if tcfg.steps > 0:
        train_ex = read_split(task, task.train, dd, task.max_train_examples, hf_split="train")
        label_map = readers.label_map(train_ex)
        if is_main():
            write_json(labels_file, label_map)
    elif cfg.init.from_run and base_labels.is_file():
        train_ex, label_map = [], json.loads(base_labels.read_text(encoding="utf-8"))
        if is_main():
            write_json(labels_file, label_map)
    else:
        raise UserError(f"task `{task.name}`: evaluation-only run (train.steps=0) needs init.from_run pointing to a "
                        "task-adapted run (its labels.json); expected a fine-tuned model")
    n_labels = feats.num_labels(task.kind, label_map)

    source = task.language or cfg.languages()[0]

    def featurize(examples, language):
        """Features in `language`'s tokenization, with each row's language id when the model needs it."""
        f = feats.encode(task.kind, examples, for_language(tokenizer, language), sp, task.seq_len, label_map,
                         doc_stride=task.doc_stride, max_query_len=task.max_query_len)
        if cfg.model.uses_language_ids:
            f.arrays["lang"] = np.full(len(f.arrays["tokens"]), cfg.language_index(language), np.int32)
        return f

    evals: dict[str, tuple[list, feats.Features]] = {}
    for lang, path in ([("dev", task.dev)] if task.dev else []) + sorted(task.test.items()):
        # Multi-language files (the original XNLI TSV/JSONL) keep the rows of that language; others are read whole.
        keep = task.language if lang == "dev" else lang
        ex = readers.read_task(task.kind, str(resolve_path(path, dd)), language=keep, max_examples=task.max_eval_examples)
        if task.kind != "qa":
            readers.check_labels(label_map, ex, str(resolve_path(path, dd)))
        evals[lang] = (ex, featurize(ex, source if lang == "dev" else lang))
    train_f = featurize(train_ex, source) if train_ex else None

    mesh = make_mesh(cfg.mesh, devices)
    check_batch(tcfg.batch_size, mesh, tcfg.grad_accum)
    sample = train_f if train_f is not None else (next(iter(evals.values()))[1] if evals else None)
    if sample is None:
        raise UserError(f"task `{task.name}`: nothing to train or evaluate; expected task.train or task.test")
    ndims = {k: v.ndim for k, v in sample.arrays.items()}
    objective, predict = task_objective(cfg, task.kind, n_labels, sp.pad, ndims, sp.eos)
    trainer = build_trainer(cfg, mesh, vocab, specials, objective)
    # Predictions come back replicated: with several processes every one reads the whole batch's.
    predict_fn = jax.jit(
        lambda params, batch: _with_rules(mesh, cfg, lambda: predict(trainer.merge(params), params, batch)),
        out_shardings=replicated(mesh),
    )

    ckpt = ckpt_lib.Checkpointer(run_dir / "checkpoints", keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    tok_sha = sha(tokenizer.to_str())
    meta = ckpt_lib.make_meta(vocab, cfg.model.model_dump(), tok_sha, {"task": task.name, "labels": n_labels})

    def fresh(params):
        return compose_params(cfg.init, params, trainer, seed=tcfg.seed, pad_id=sp.pad, tokenizer_sha=tok_sha,
                              tokenizer=tokenizer, data_dir=dd, log=log)

    state, start, restored = restore_or_init(ckpt, trainer, meta, resume=cfg.checkpoint.resume, fresh_params=fresh,
                                             draw=not uses_hf(cfg.init))
    if is_main():
        write_config(run_dir, config_text, changed, start)

    metrics_log = MetricsLog(run_dir, start, enabled=is_main())
    progress = Progress(tcfg.steps, start, enabled=tcfg.progress and is_main() and tcfg.steps > 0)
    rows = RowLogger(metrics_log, progress, tcfg.log_every, tcfg.steps)
    order = _Order(len(train_f.arrays["tokens"]), tcfg.batch_size, tcfg.seed) if train_f else None
    checkpoints = Checkpoints(ckpt, meta, every(cfg.checkpoint.every), last=start if restored else None)
    try:
        with StopRequest() as stop:
            end = train_loop(trainer, state, start=start, total=tcfg.steps, steps_per_call=tcfg.steps_per_call,
                             batch_of=lambda t: local_rows(train_f.arrays, order.rows(t - 1)),
                             global_batch=tcfg.batch_size, hooks=[], checkpoints=checkpoints, rows=rows,
                             stop=stop, stop_at=stop_at)
        state = end.state
        if not end.interrupted:
            checkpoints.save(end.step, state)  # with train.steps 0, the assembled model: a checkpoint too
    finally:
        progress.close()
        ckpt.close()
        metrics_log.close()
    if end.interrupted:
        log(f"stopped at step {end.step}; checkpoint saved, rerun the same command to resume")
        return RunResult(run_dir, end.step, {"signal": end.signal}, interrupted=True)

    scores = {lang: _score(task, state["params"], ex, f, label_map, predict_fn, mesh, tcfg.batch_size)
              for lang, (ex, f) in evals.items()}
    summary = [
        {"model": cfg.name, "stage": stage, "task": task.name, "language": lang, "metric": m, "value": v}
        for lang, sc in scores.items() for m, v in sc.items()
    ]
    results = {"name": cfg.name, "task": task.name, "scores": scores, "summary": summary,
               "final": {"step": tcfg.steps, "wall_time_s": time.perf_counter() - t0, "labels": n_labels}}
    if is_main():
        write_json(run_dir / "results.json", results)
    log(f"{stage} {task.name}: " + "; ".join(f"{l} " + ", ".join(f"{m} {v:.4f}" for m, v in sc.items()) for l, sc in scores.items()))
    return RunResult(run_dir, tcfg.steps, results)


def _with_rules(mesh, cfg, fn):
    with activation_rules(mesh, cfg.mesh.rules):
        return fn()


def _score(task: TaskConfig, params, examples, f: feats.Features, label_map, predict_fn, mesh, batch: int) -> dict:
    """Predictions batch by batch (the last batch padded with copies of row 0, then dropped), scored on host."""
    n = len(f.arrays["tokens"])
    outs: list[dict] = []
    for lo in range(0, n, batch):
        idx = np.arange(lo, lo + batch)
        idx[idx >= n] = 0
        local = local_rows(f.arrays, idx)
        out = jax.device_get(predict_fn(params, put_global_batch(local, mesh, batch)))
        keep = min(batch, n - lo)
        outs.append({k: v[:keep] for k, v in out.items()})
    preds = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]} if outs else {}
    return feats.score(task.kind, preds, f, examples, label_map, max_answer_len=task.max_answer_len, punct=task.punct)
