"""Tokenize and pack corpora into the sharded row cache, in parallel over local workers and over
jax.distributed processes, with the same bytes whatever their number.

How: a corpus is an ordered list of segments (data/segments.py); segment k is packed by process
k mod P (on one of its workers) with guessed `SegmentParams` (segment 0 gives the held-out tokens, no
budget), and records its counts and its documents' lengths. From the counts every process computes the same plan
(data/packing.py `plan_segments`): which segments are used and the few (the last one, before a budget,
or after a short first one) whose params differ from the guess; those are packed again, then process 0
writes the eval rows and the index. With a budget (`max_tokens`, `max_lines`) segments go in waves of a
few per worker and reading stops at the wave that reaches it, so a 5M-token budget of a 2 TB stream
reads about 5M tokens (plus one wave), not the stream.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from xlplastic.config import CorpusConfig, DataConfig
from xlplastic.data import cache as cache_lib
from xlplastic.data.cache import PackedLanguage
from xlplastic.data.packing import SegmentParams, pack_segment, plan_segments
from xlplastic.data.segments import Segment, SegmentReader, describe, file_segments
from xlplastic.data.sources import resolve_path
from xlplastic.errors import UserError
from xlplastic.paths import as_path, rmtree

log = logging.getLogger(__name__)

_ENCODE_BATCH = 1024  # documents per `encode_batch` call
_WAVE_PER_WORKER = 2  # segments per worker between budget checks
PARTS = ".parts"  # per-segment counts while a build is under way (removed when the index is written)


@dataclass(frozen=True)
class Share:
    """Who packs what: this process's index and count (jax.distributed), and its local workers."""

    process_index: int = 0
    process_count: int = 1
    workers: int = 1
    progress: bool = False  # a progress bar on process 0 (xlplastic prepare)
    hint: bool = False  # say how to prepare ahead when a run builds the cache itself

    def mine(self, ks) -> list[int]:
        return [k for k in ks if k % self.process_count == self.process_index]


# ----------------------------------------------------------------------------------------------
# Keys


def tokenizer_sha(tok) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def tokenizer_identity(cfg: DataConfig) -> dict:
    """What names the tokenizer a cache is built with: its file, or how and on what it is trained.
    The cache's folder is keyed by this, and the index records the tokenizer's own hash: a folder
    asked for with a tokenizer that is not the one it was built with is refused, not rebuilt."""
    tcfg = cfg.tokenizer
    if tcfg.path:  # found as data/run_tokenizer.py finds it
        path = resolve_path(tcfg.path, None)
        if not cache_lib.is_remote(path) and not path.is_absolute() and cfg.data_dir and not path.exists():
            path = resolve_path(tcfg.path, cfg.data_dir)
        return {"path": str(path) if cache_lib.is_remote(path) else os.path.abspath(str(path))}
    return {"trained": tcfg.model_dump(mode="json"), "on": [_source(c, cfg.data_dir) for c in cfg.corpora]}


def _source(corpus: CorpusConfig, data_dir: str | None) -> dict:
    out = corpus.model_dump(mode="json")
    if corpus.path:
        p = resolve_path(corpus.path, data_dir)
        out["resolved"] = str(p) if cache_lib.is_remote(p) else os.path.abspath(str(p))
    return out


def packing_config(corpus: CorpusConfig, cfg: DataConfig) -> dict:
    return dict(scheme="roberta-full-sentences, per segment", seq_len=cfg.seq_len, eval_sequences=cfg.eval_sequences,
                segment_bytes=cfg.segment_bytes, segment_docs=cfg.segment_docs, max_tokens=corpus.max_tokens,
                max_lines=corpus.max_lines)


def cache_folder(corpus: CorpusConfig, cfg: DataConfig, cache_dir) -> cache_lib.AnyPath:
    blob = json.dumps(dict(v=cache_lib.VERSION, source=_source(corpus, cfg.data_dir), tokenizer=tokenizer_identity(cfg),
                           packing=packing_config(corpus, cfg)), sort_keys=True)
    return as_path(cache_dir) / f"{corpus.language}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"


# ----------------------------------------------------------------------------------------------
# One segment (runs in a worker process or in this one)


def _token_docs(texts, tok):
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) >= _ENCODE_BATCH:
            yield from (np.asarray(e.ids, np.int32) for e in tok.encode_batch_fast(batch, add_special_tokens=False))
            batch = []
    if batch:
        yield from (np.asarray(e.ids, np.int32) for e in tok.encode_batch_fast(batch, add_special_tokens=False))


def _save_npy(path: cache_lib.AnyPath, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    if cache_lib.is_remote(path):
        path.write_bytes(buf.getvalue())
    else:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)


def _load_npy(path: cache_lib.AnyPath) -> np.ndarray:
    return np.load(io.BytesIO(path.read_bytes()))


def pack_one(reader: SegmentReader, tok, sp, corpus: CorpusConfig, seg: Segment, params: SegmentParams,
             folder: cache_lib.AnyPath, seq_len: int) -> dict:
    """Packs one segment into its shard; its counts (and held-out tokens) go to the `.parts` folder."""
    from xlplastic.data.vocabulary import for_language

    texts = reader.texts(seg)
    if params.doc_limit is not None:
        texts = itertools.islice(texts, params.doc_limit)
    if corpus.code_switch is not None:
        from xlplastic.data.codeswitch import code_switch

        texts = code_switch(texts, corpus.code_switch, reader.data_dir, segment=seg.index)
    writer = cache_lib.ShardWriter(folder / f"train-{seg.index:06d}.npy", seq_len)
    try:
        packed = pack_segment(_token_docs(texts, for_language(tok, corpus.language)), params, seq_len, sp, writer.write)
    except BaseException:
        writer.abort()
        raise
    shard = writer.close()
    parts = folder / PARTS
    _save_npy(parts / f"{seg.index:06d}.lengths.npy", packed.lengths)
    _save_npy(parts / f"{seg.index:06d}.held.npy", packed.held)
    stats = dict(segment=seg.index, params=[params.eval_tokens, params.token_limit, params.doc_limit],
                 held=len(packed.held), rows=packed.rows, train_tokens=packed.train_tokens, documents=len(packed.lengths),
                 content_tokens=int(packed.lengths.sum(dtype=np.int64)),
                 shard=shard, bytes=seg.end - seg.start)
    (parts / f"{seg.index:06d}.json").write_text(json.dumps(stats))
    return stats


_WORKER: dict = {}


def _worker_init(tok, sp) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the workers are the parallelism
    _WORKER.update(tok=tok, sp=sp)


def _worker_job(corpus_json: str, data_dir, segment_docs, seg: Segment, params: SegmentParams, folder: str, seq_len: int) -> dict:
    corpus = CorpusConfig.model_validate_json(corpus_json)
    reader = SegmentReader(corpus, data_dir, segment_docs)
    return pack_one(reader, _WORKER["tok"], _WORKER["sp"], corpus, seg, params, as_path(folder), seq_len)


# ----------------------------------------------------------------------------------------------
# One corpus


class _Progress:
    """Documents, tokens, throughput and ETA of this process's share (rich), or nothing. Measured in
    training tokens against a token budget, else in input bytes when the files are known, else open-ended."""

    def __init__(self, enabled: bool, what: str, total_bytes: int | None, budget: int | None):
        self.bar = None
        self.docs = self.tokens = 0
        self.t0 = time.perf_counter()
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.by = "tokens" if budget else "bytes"
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                            TextColumn("{task.fields[docs]:,} docs, {task.fields[tokens]:,} tokens, {task.fields[rate]}"),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=_console())
        self.bar.start()
        self.task = self.bar.add_task(what, total=budget or total_bytes, docs=0, tokens=0, rate="")

    def update(self, stats: dict) -> None:
        self.docs += stats["documents"]
        self.tokens += stats["train_tokens"] + stats["held"]
        if self.bar is not None:
            rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, advance=stats["train_tokens"] if self.by == "tokens" else stats["bytes"],
                            docs=self.docs, tokens=self.tokens, rate=f"{rate / 1e3:,.0f}k tokens/s")

    def close(self, finished: bool) -> None:
        if self.bar is not None:
            if finished:  # a budget reached before the end of the input ends the bar full
                self.bar.update(self.task, completed=self.bar.tasks[0].total)
            self.bar.stop()


def _console():
    from rich.console import Console

    return Console(file=sys.stderr)


def _barrier(share: Share, name: str) -> None:
    if share.process_count > 1:
        from xlplastic.runtime import barrier

        barrier(name)


class _Workers:
    """The local worker processes of one build, shared by all its corpora (a spawned worker costs about
    a second to start: a pool per corpus made a 2-worker build of 11 small files slower than 1 worker)."""

    def __init__(self, tok, workers: int):
        self.tok, self.workers, self._pool = tok, workers, None

    def pool(self):
        if self._pool is None and self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            from xlplastic.data.tokenizers import special_tokens

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init, initargs=(self.tok, special_tokens(self.tok)))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class _Packer:
    """Runs segment jobs in this process or on the build's local worker processes."""

    def __init__(self, corpus: CorpusConfig, cfg: DataConfig, tok, sp, folder: cache_lib.AnyPath, workers: _Workers,
                 streamed: bool):
        self.corpus, self.cfg, self.tok, self.sp, self.folder = corpus, cfg, tok, sp, folder
        self.reader = SegmentReader(corpus, cfg.data_dir, cfg.segment_docs)
        # a stream is read by one cursor per process (workers would each read it all); HF tokenizers
        # still encode each batch on every core
        self.pool = None if streamed else workers.pool()

    def run(self, jobs: list[tuple[Segment, SegmentParams]], done: Callable[[dict], None]) -> None:
        if self.pool is None:
            for seg, params in jobs:
                done(pack_one(self.reader, self.tok, self.sp, self.corpus, seg, params, self.folder, self.cfg.seq_len))
            return
        from concurrent.futures import as_completed

        futures = [self.pool.submit(_worker_job, self.corpus.model_dump_json(), self.cfg.data_dir, self.cfg.segment_docs,
                                    seg, params, str(self.folder), self.cfg.seq_len) for seg, params in jobs]
        try:
            for f in as_completed(futures):
                done(f.result())
        finally:
            for f in futures:  # on an error, this corpus's jobs not yet started are dropped
                f.cancel()


def _together(share: Share, folder, name: str, work: Callable[[], None]) -> None:
    """Runs this process's part of a step, then waits for the others. Bad input found by one process
    (its segment is not UTF-8, ...) is raised by all of them, after the barrier: none is left waiting."""
    error = folder / PARTS / f"error-{name}-{share.process_index:05d}.txt"
    try:
        work()
    except UserError as e:
        if share.process_count == 1:
            raise
        error.write_text(str(e))
    _barrier(share, f"cache-{name}-{folder.name}")
    if share.process_count > 1:
        found = sorted((folder / PARTS).glob(f"error-{name}-*.txt"), key=str)
        if found:
            raise UserError(found[0].read_text())


def _guess(k: int, eval_tokens: int) -> SegmentParams:
    return SegmentParams(eval_tokens=eval_tokens if k == 0 else 0)


def _stats(folder: cache_lib.AnyPath, k: int) -> dict:
    return json.loads((folder / PARTS / f"{k:06d}.json").read_text())


def build_corpus(corpus: CorpusConfig, tok, cfg: DataConfig, folder: cache_lib.AnyPath, share: Share,
                 workers: _Workers) -> None:
    """Packs `corpus` into `folder` (every process of the share calls this; process 0 writes the index),
    on `workers`, the build's pool (build_corpora owns and closes it)."""
    from xlplastic.data.tokenizers import special_tokens

    sp = special_tokens(tok)
    if share.process_index == 0:
        (folder / PARTS).mkdir(parents=True, exist_ok=True)
    _barrier(share, f"cache-start-{folder.name}")
    body = cfg.seq_len - 2
    eval_tokens = cfg.eval_sequences * body
    listed = file_segments(corpus, cfg.data_dir, cfg.segment_bytes)
    budget = corpus.max_tokens is not None or corpus.max_lines is not None
    total_bytes = sum(s.end - s.start for s in listed) if listed is not None else None
    progress = _Progress(share.progress and share.process_index == 0, f"{corpus.language}", total_bytes, corpus.max_tokens)
    packer = _Packer(corpus, cfg, tok, sp, folder, workers, streamed=listed is None)
    wave = share.process_count * share.workers * _WAVE_PER_WORKER
    finished = False
    try:
        counts: list[tuple[int, int]] = []  # (documents, content tokens) per segment
        held: dict[int, int] = {}

        def lengths_of(j: int) -> np.ndarray:
            return _load_npy(folder / PARTS / f"{j:06d}.lengths.npy")

        k, ended = 0, False
        while not ended:
            if listed is not None:
                ks = list(range(k, len(listed) if not budget else min(k + wave, len(listed))))
            else:
                ks = list(range(k, k + wave))
            segs = {j: listed[j] if listed is not None else Segment(j) for j in ks}
            _together(share, folder, f"wave-{k}",
                      lambda: packer.run([(segs[j], _guess(j, eval_tokens)) for j in share.mine(ks)], progress.update))
            for j in ks:
                s = _stats(folder, j)
                counts.append((s["documents"], s["content_tokens"]))
                held[j] = s["held"]
                if listed is None and s["documents"] < cfg.segment_docs:
                    ended = True  # the stream ended in this segment: the ones after it are empty
            k = ks[-1] + 1 if ks else k
            if listed is not None and k >= len(listed):
                ended = True
            plan, _ = plan_segments(counts, lengths_of, eval_tokens, corpus.max_tokens, corpus.max_lines)
            if len(plan) < len(counts) or (plan and (plan[-1].token_limit is not None or plan[-1].doc_limit is not None)):
                ended = True
        plan, _ = plan_segments(counts, lengths_of, eval_tokens, corpus.max_tokens, corpus.max_lines)
        used = len(plan)
        redo = [j for j, p in enumerate(plan) if p != SegmentParams(held[j], None, None)]
        _together(share, folder, "redo", lambda: packer.run(
            [(listed[j] if listed is not None else Segment(j), plan[j]) for j in share.mine(redo)], lambda s: None))
        finished = True
    finally:
        progress.close(finished)
    if share.process_index == 0:
        for j in range(used, len(counts)):  # packed in the last wave but past the budget
            (folder / f"train-{j:06d}.npy").unlink(missing_ok=True)
    _barrier(share, f"cache-packed-{folder.name}")
    stats = [_stats(folder, j) for j in range(used)]  # every process checks, so every process stops on bad data
    n_eval = sum(s["held"] for s in stats) // body
    n_train = sum(s["rows"] for s in stats)
    if sum(s["documents"] for s in stats) == 0:
        raise UserError(f"{describe(corpus)}: no non-empty text; expected at least one document")
    if n_eval < cfg.eval_sequences or n_train < 1:
        raise UserError(
            f"corpus `{corpus.language}` ({corpus.path or corpus.name or corpus.kind}) gives {n_eval + n_train} "
            f"sequences of {cfg.seq_len} tokens; expected at least {cfg.eval_sequences + 1} "
            f"(1 train + {cfg.eval_sequences} eval)"
        )
    if share.process_index == 0:
        _write_index(corpus, tok, sp, cfg, folder, stats)
    _barrier(share, f"cache-done-{folder.name}")
    if share.process_index == 0:  # only once every process has read the counts
        rmtree(folder / PARTS)


def _write_index(corpus, tok, sp, cfg: DataConfig, folder: cache_lib.AnyPath, stats: list[dict]) -> None:
    """Eval rows from the held-out pieces, then the index (last: its presence means complete)."""
    body = cfg.seq_len - 2
    pieces = [_load_npy(folder / PARTS / f"{s['segment']:06d}.held.npy") for s in stats]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    n_eval = len(stream) // body
    train_tokens = sum(s["train_tokens"] for s in stats)
    if corpus.max_tokens is not None and train_tokens < corpus.max_tokens:
        log.warning("corpus %s has only %d training tokens, fewer than max_tokens=%d; using all of it",
                    corpus.language, train_tokens, corpus.max_tokens)
    rows = np.full((n_eval, cfg.seq_len), sp.pad, np.int32)
    rows[:, 0], rows[:, -1] = sp.bos, sp.eos
    rows[:, 1:-1] = stream[: n_eval * body].reshape(n_eval, body)
    ev = cache_lib.write_array(folder / "eval.npy", rows)
    for s in stats:
        if s["rows"] == 0:
            (folder / s["shard"]["file"]).unlink(missing_ok=True)
    index = dict(format=cache_lib.FORMAT, version=cache_lib.VERSION, language=corpus.language,
                 tokenizer_sha=tokenizer_sha(tok), tokenizer=tokenizer_identity(cfg), source=_source(corpus, cfg.data_dir),
                 packing=packing_config(corpus, cfg), seq_len=cfg.seq_len, dtype="int32",
                 header_bytes=cache_lib.HEADER_BYTES, documents=sum(s["documents"] for s in stats),
                 train_tokens=train_tokens, train_rows=sum(s["rows"] for s in stats), eval_rows=n_eval,
                 segments=len(stats), eval=ev, shards=[s["shard"] for s in stats if s["rows"] > 0])
    cache_lib.write_index(folder, index)


# ----------------------------------------------------------------------------------------------
# All corpora of a config


def build_corpora(cfg: DataConfig, tokenizer, cache_dir, share: Share | None = None, verify: bool = False) -> list[PackedLanguage]:
    """Packed train/eval rows per corpus (in config order), built where missing and opened after.

    Every process of `share` must call it (they pack together); by default one process, in-process,
    which says how to prepare ahead (what `xlplastic run` does when the cache is missing)."""
    share = share or Share(hint=True)
    sha = tokenizer_sha(tokenizer)
    out = []
    workers = _Workers(tokenizer, share.workers)
    try:
        for corpus in cfg.corpora:
            folder = cache_folder(corpus, cfg, cache_dir)
            if cache_lib.read_index(folder) is None:
                if share.hint and share.process_index == 0:
                    print(f"xlplastic: building the data cache of {describe(corpus)} in {folder}; for a big corpus, "
                          "prepare it ahead in parallel with `xlplastic prepare CONFIG` (all cores, and all processes "
                          "of a multi-host launch)", flush=True)
                build_corpus(corpus, tokenizer, cfg, folder, share, workers)
            out.append(cache_lib.open_cache(folder, sha, verify=verify))
    finally:
        workers.close()
    return out
