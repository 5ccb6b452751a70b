"""Tokenize, pack, cache and sample: corpora in, deterministic global batches out.

Why: a batch must be a pure function of (seed, step) so that resuming needs only the step and every
host can cut its own slice of the same global batch; packed corpora live in memory-mapped .npy files
so a host only reads the rows it uses and a rerun skips tokenization.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from xlplastic.config import CorpusConfig, DataConfig
from xlplastic.data.permutation import FeistelPermutation
from xlplastic.data.sources import iter_texts, resolve_path
from xlplastic.data.tokenizers import special_tokens, tokenizer_json
from xlplastic.data.vocabulary import for_language
from xlplastic.errors import UserError

log = logging.getLogger(__name__)

_CACHE_VERSION = 3  # bump when the packing or cache layout changes
_ENCODE_BATCH = 1024  # documents per `encode_batch` call


@dataclass(frozen=True)
class PackedLanguage:
    language: str
    train: np.ndarray  # int32 [N_train, seq_len], memory-mapped
    eval: np.ndarray  # int32 [N_eval, seq_len], memory-mapped
    num_tokens: int  # content tokens used (without bos/eos/pad)


# ----------------------------------------------------------------------------------------------
# Packing


class RowPacker:
    """RoBERTa "full-sentences" packing, streamed: memory is bounded by `flush_tokens`, not the corpus.

    Documents are concatenated, each followed by `eos` as a separator; the stream is cut into chunks
    of seq_len-2, and each chunk becomes `bos chunk eos`; the last one is right-padded with `pad`.
    A final chunk holding only the last separator is dropped (it carries no text). Finished rows go to
    `sink` (e.g. appended to a cache file) as they are formed.
    """

    def __init__(self, seq_len: int, bos: int, eos: int, pad: int, sink, flush_tokens: int = 1 << 20):
        if seq_len < 3:
            raise UserError(f"data.seq_len is {seq_len}; expected at least 3 (bos, one token, eos)")
        self.seq_len, self.bos, self.eos, self.pad, self.sink = seq_len, bos, eos, pad, sink
        self.body = seq_len - 2
        self.flush_tokens = max(flush_tokens, self.body)
        self._parts: list[np.ndarray] = []
        self._pending = 0
        self.rows = 0

    def add(self, doc: Sequence[int]) -> None:
        if len(doc):
            self._parts += [np.asarray(doc, dtype=np.int32), np.array([self.eos], dtype=np.int32)]
            self._pending += len(doc) + 1
            if self._pending >= self.flush_tokens:
                self._emit(final=False)

    def finish(self) -> int:
        """Emits the last (padded) row; returns the number of rows produced."""
        self._emit(final=True)
        return self.rows

    def _emit(self, final: bool) -> None:
        stream = np.concatenate(self._parts) if self._parts else np.zeros(0, np.int32)
        body = self.body
        full = len(stream) // body
        rest = len(stream) - full * body
        if final and rest == 1 and self.rows + full >= 1:  # only the trailing separator is left
            rest = 0
        n = full + (1 if final and rest else 0)
        if n:
            out = np.full((n, self.seq_len), self.pad, dtype=np.int32)
            out[:, 0] = self.bos
            out[:full, 1 : 1 + body] = stream[: full * body].reshape(full, body)
            out[:full, -1] = self.eos
            if final and rest:
                out[full, 1 : 1 + rest] = stream[full * body : full * body + rest]
                out[full, 1 + rest] = self.eos
            self.sink(out)
            self.rows += n
        self._parts = [] if final else [stream[full * body :]]
        self._pending = 0 if final else rest


def pack_documents(token_lists: Iterable[Sequence[int]], seq_len: int, bos: int, eos: int, pad: int) -> np.ndarray:
    """All of `RowPacker`'s rows as one array (int32 [N, seq_len])."""
    rows: list[np.ndarray] = []
    packer = RowPacker(seq_len, bos, eos, pad, rows.append)
    for doc in token_lists:
        packer.add(doc)
    packer.finish()
    return np.concatenate(rows) if rows else np.zeros((0, seq_len), dtype=np.int32)


# ----------------------------------------------------------------------------------------------
# Tokenize + cache


def _token_docs(corpus: CorpusConfig, tok: Tokenizer, data_dir: str | None) -> Iterator[np.ndarray]:
    """Token ids per document (content tokens only; the corpus language's tokenizer), read in batches."""
    tok = for_language(tok, corpus.language)
    batch: list[str] = []

    def encoded():
        for enc in tok.encode_batch_fast(batch, add_special_tokens=False):
            yield np.asarray(enc.ids, dtype=np.int32)
        batch.clear()

    texts = iter_texts(corpus, data_dir)
    if corpus.code_switch is not None:
        from xlplastic.data.codeswitch import code_switch

        texts = code_switch(texts, corpus.code_switch, data_dir)
    for text in texts:
        batch.append(text)
        if len(batch) >= _ENCODE_BATCH:
            yield from encoded()
    if batch:
        yield from encoded()


def _pack_split(docs: Iterable[np.ndarray], cfg: DataConfig, corpus: CorpusConfig, sp, train_sink) -> tuple[np.ndarray, int, int]:
    """Held-out rows first, then training rows under the token budget.

    The packed stream (documents, each followed by a separator) gives its first `eval_sequences` rows to
    evaluation and the rest to training, so the held-out set is the same for every budget (as in the
    reference's low-data runs) and `max_tokens` counts training tokens only (the last document is cut).
    Returns (eval rows, number of training rows, training content tokens).
    """
    body = cfg.seq_len - 2
    need = cfg.eval_sequences * body
    held: list[np.ndarray] = []
    packer = RowPacker(cfg.seq_len, sp.bos, sp.eos, sp.pad, train_sink)
    budget, count = corpus.max_tokens, 0
    for ids in docs:
        if need > 0:
            stream = np.concatenate([ids, [sp.eos]]).astype(np.int32)
            held.append(stream[:need])
            need -= len(held[-1])
            ids = stream[len(held[-1]) : -1]  # the document's remainder (its separator comes from the packer)
            if len(ids) == 0:
                continue
        if budget is not None and count + len(ids) >= budget:
            ids = ids[: budget - count]
            count += len(ids)
            packer.add(ids)
            break
        count += len(ids)
        packer.add(ids)
    else:
        if budget is not None:
            log.warning(
                "corpus %s has only %d training tokens, fewer than max_tokens=%d; using all of it",
                corpus.language, count, budget,
            )
    n_train = packer.finish()
    stream = np.concatenate(held) if held else np.zeros(0, np.int32)
    n_eval = len(stream) // body
    rows = np.full((n_eval, cfg.seq_len), sp.pad, np.int32)
    rows[:, 0], rows[:, -1] = sp.bos, sp.eos
    rows[:, 1:-1] = stream[: n_eval * body].reshape(n_eval, body)
    return rows, n_train, count


def _cache_key(corpus: CorpusConfig, tok: Tokenizer, cfg: DataConfig) -> str:
    resolved = str(resolve_path(corpus.path, cfg.data_dir).resolve()) if corpus.path else None
    blob = json.dumps(
        dict(
            v=_CACHE_VERSION,
            corpus=corpus.model_dump(mode="json"),
            path=resolved,
            tokenizer=tokenizer_json(tok),
            seq_len=cfg.seq_len,
            eval_sequences=cfg.eval_sequences,
        ),
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _build_one(corpus: CorpusConfig, tok: Tokenizer, cfg: DataConfig, cache_dir: Path) -> PackedLanguage:
    key = _cache_key(corpus, tok, cfg)
    stem = cache_dir / f"{corpus.language}-{key}"
    rows_p, meta_p = Path(f"{stem}.rows.int32"), Path(f"{stem}.json")
    if not meta_p.is_file():  # meta is written last: its presence means the rows are complete
        cache_dir.mkdir(parents=True, exist_ok=True)
        sp = special_tokens(tok)
        tmp = rows_p.with_name(f"{rows_p.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:  # rows stream to disk: memory stays bounded for any corpus size
            held, n, count = _pack_split(_token_docs(corpus, tok, cfg.data_dir), cfg, corpus, sp,
                                         lambda rows: f.write(rows.tobytes()))
            if len(held) < cfg.eval_sequences or n < 1:
                f.close()
                tmp.unlink()
                raise UserError(
                    f"corpus `{corpus.language}` ({corpus.path or corpus.name or corpus.kind}) gives {len(held) + n} "
                    f"sequences of {cfg.seq_len} tokens; expected at least {cfg.eval_sequences + 1} "
                    f"(1 train + {cfg.eval_sequences} eval)"
                )
            f.write(held.tobytes())  # held-out rows go last in the file: rows[:train] | rows[train:]
        n_rows = n + len(held)
        os.replace(tmp, rows_p)
        meta = dict(language=corpus.language, num_tokens=count, rows=n_rows, seq_len=cfg.seq_len, train=n)
        tmp_meta = meta_p.with_name(f"{meta_p.name}.tmp{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, meta_p)
    meta = json.loads(meta_p.read_text())
    rows = np.memmap(rows_p, dtype=np.int32, mode="r", shape=(int(meta["rows"]), int(meta["seq_len"])))
    split = int(meta["train"])  # the held-out rows (the stream's first) are stored last
    return PackedLanguage(language=corpus.language, train=rows[:split], eval=rows[split:], num_tokens=int(meta["num_tokens"]))


def build_corpora(cfg: DataConfig, tokenizer: Tokenizer, cache_dir: Path) -> list[PackedLanguage]:
    """Packed train/eval arrays per corpus (in config order), built once and memory-mapped after."""
    return [_build_one(c, tokenizer, cfg, Path(cache_dir)) for c in cfg.corpora]


# ----------------------------------------------------------------------------------------------
# Sampling


def language_weights(sizes: Sequence[int], alpha: float) -> np.ndarray:
    """p_l ∝ (n_l / Σn)^alpha (XLM-R): alpha < 1 up-samples small languages."""
    n = np.asarray(sizes, dtype=np.float64)
    if n.ndim != 1 or len(n) == 0 or (n <= 0).any():
        raise UserError(f"language sizes {list(sizes)}: expected one positive size per language")
    p = (n / n.sum()) ** alpha
    return p / p.sum()


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        if len(self) > self.size:
            self.popitem(last=False)
        return value


class StepSampler:
    """Global batch = pure function of (seed, step); no iterator state, so resume is just the step.

    Slots g = step*B + j are grouped in blocks of K slots (K a multiple of B). Block b holds language l
    q_l(b) = floor((b+1)K w_l) - floor(bK w_l) times (the largest language takes the remainder), so the
    count of l before block b is floor(bK w_l) in closed form and long-run shares equal the weights
    exactly. Slots are shuffled within a block by rng(seed, b). Each language walks epoch-wise
    permutations of its rows, epoch e keyed by (seed, l, e): every sequence once per epoch. The
    permutations are Feistel bijections (`data.permutation`): O(1) memory and O(rounds) per row, so
    host memory and epoch boundaries cost the same for 10^3 rows as for 10^9.
    """

    _TAG_BLOCK, _TAG_EPOCH = 1, 2

    def __init__(self, langs: list[PackedLanguage], global_batch: int, seed: int, alpha: float):
        if not langs:
            raise UserError("no corpora: expected at least one entry in data.corpora")
        if global_batch < 1:
            raise UserError(f"global batch is {global_batch}; expected at least 1")
        self.langs, self.B, self.seed = langs, global_batch, seed % (1 << 64)  # rng seeds are unsigned
        self.sizes = np.array([len(l.train) for l in langs], dtype=np.int64)
        self.weights = language_weights(self.sizes, alpha)
        L = len(langs)
        need = max(L * (L - 1), 1)  # guarantees the largest language's remainder quota is >= 0
        self.K = global_batch * -(-need // global_batch)
        self.big = int(np.argmax(self.weights))
        self._blocks = _LRU(8)

    # -- language layout -------------------------------------------------------------------------
    def _before(self, b: int) -> np.ndarray:
        """Slots of each language in blocks [0, b)."""
        c = np.floor(b * self.K * self.weights).astype(np.int64)
        c[self.big] = b * self.K - (c.sum() - c[self.big])
        return c

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(language, rank among that language's slots in this block) for every slot of block b."""

        def make():
            quota = self._before(b + 1) - self._before(b)
            labels = np.repeat(np.arange(len(self.langs)), quota)
            labels = np.random.default_rng([self.seed, self._TAG_BLOCK, b]).permutation(labels)
            order = np.argsort(labels, kind="stable")
            starts = np.concatenate([[0], np.cumsum(quota)[:-1]])
            rank = np.empty(self.K, dtype=np.int64)
            rank[order] = np.arange(self.K) - starts[labels[order]]
            return labels, rank

        return self._blocks.get_or(b, make)

    def _perm(self, lang: int, epoch: int) -> FeistelPermutation:
        return FeistelPermutation(int(self.sizes[lang]), [self.seed, self._TAG_EPOCH, lang, epoch])

    # -- public ----------------------------------------------------------------------------------
    def global_rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(lang_ids [B], row_ids [B]) of the global batch at `step` (rows index `langs[l].train`)."""
        if step < 0:
            raise UserError(f"step {step}: expected a non-negative step")
        g = step * self.B + np.arange(self.B, dtype=np.int64)
        blk, off = g // self.K, g % self.K
        lang = np.empty(self.B, dtype=np.int32)
        count = np.empty(self.B, dtype=np.int64)  # slots of the same language before this one
        for b in np.unique(blk):
            sel = blk == b
            labels, rank = self._block(int(b))
            lang[sel] = labels[off[sel]]
            count[sel] = self._before(int(b))[labels[off[sel]]] + rank[off[sel]]
        rows = np.empty(self.B, dtype=np.int64)
        for l in np.unique(lang):
            sel = lang == l
            epoch, pos = np.divmod(count[sel], self.sizes[l])
            out = np.empty(len(pos), dtype=np.int64)
            for e in np.unique(epoch):
                m = epoch == e
                out[m] = self._perm(int(l), int(e))(pos[m])
            rows[sel] = out
        return lang, rows

    @staticmethod
    def _slice(n: int, process_index: int, process_count: int) -> slice:
        if process_count < 1 or not 0 <= process_index < process_count:
            raise UserError(f"process {process_index} of {process_count}: expected 0 <= index < count")
        if n % process_count:
            raise UserError(f"batch of {n} sequences is not divisible by {process_count} processes; expected a multiple")
        per = n // process_count
        return slice(process_index * per, (process_index + 1) * per)

    def _gather(self, lang: np.ndarray, rows: np.ndarray, split: str) -> dict[str, np.ndarray]:
        tokens = np.empty((len(lang), self.langs[0].train.shape[1]), dtype=np.int32)
        for l in np.unique(lang):
            sel = np.flatnonzero(lang == l)
            order = np.argsort(rows[sel], kind="stable")  # sorted reads are kinder to a memory map
            tokens[sel[order]] = getattr(self.langs[l], split)[rows[sel][order]]
        return dict(tokens=tokens, lang=lang.astype(np.int32))

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
        """This process's contiguous slice of the global batch: tokens int32 [B/P, L], lang int32 [B/P]."""
        s = self._slice(self.B, process_index, process_count)
        lang, rows = self.global_rows(step)
        return self._gather(lang[s], rows[s], "train")

    def eval_batches(
        self, batch_size: int, num_batches: int, process_index: int = 0, process_count: int = 1
    ) -> list[dict[str, np.ndarray]]:
        """Fixed held-out batches: eval rows interleaved across languages, in order.

        At most enough batches to cover every eval row once; the last one wraps around to stay full.
        """
        s = self._slice(batch_size, process_index, process_count)
        n_eval = [len(l.eval) for l in self.langs]
        if sum(n_eval) == 0 or num_batches < 1:
            return []
        # round-robin: row i of every language, then row i+1, ...
        pairs = [(l, i) for i in range(max(n_eval)) for l in range(len(self.langs)) if i < n_eval[l]]
        n = min(num_batches, -(-len(pairs) // batch_size))
        idx = np.arange(n * batch_size) % len(pairs)
        lang = np.array([pairs[i][0] for i in idx], dtype=np.int32).reshape(n, batch_size)
        rows = np.array([pairs[i][1] for i in idx], dtype=np.int64).reshape(n, batch_size)
        return [self._gather(lang[k][s], rows[k][s], "eval") for k in range(n)]
