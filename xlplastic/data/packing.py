"""RoBERTa "full-sentences" packing of one segment's documents into fixed-length rows.

Why segments: the rows of a corpus are the concatenation of its segments' rows, each segment packed on
its own (its last row padded), and a segment is fixed by the data (a byte range of a file, a range of
documents), never by how many workers pack it. So any split of the segments over processes gives the
same bytes, and a segment's rows depend only on its documents and the three `SegmentParams` the
corpus-wide counts decide (held-out tokens it gives, where a token or document budget cuts it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from xlplastic.errors import UserError


class RowPacker:
    """Documents are concatenated, each followed by `eos` as a separator; the stream is cut into chunks
    of seq_len-2, and each chunk becomes `bos chunk eos`; the last one is right-padded with `pad`.
    A final chunk holding only the last separator is dropped (it carries no text). Finished rows go to
    `sink` (e.g. appended to a shard file) as they are formed: memory is bounded by `flush_tokens`.
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


@dataclass(frozen=True)
class SegmentParams:
    """What the corpus-wide counts decide for one segment: the first `eval_tokens` tokens of its
    stream (documents, each followed by a separator) are held out; then at most `token_limit`
    training content tokens (the document that reaches it is cut) from its first `doc_limit` documents."""

    eval_tokens: int = 0
    token_limit: int | None = None
    doc_limit: int | None = None


@dataclass
class SegmentPacked:
    held: np.ndarray  # int32 stream tokens given to evaluation (the corpus's eval rows are cut from these)
    rows: int  # training rows written to the sink
    train_tokens: int  # training content tokens packed
    lengths: np.ndarray  # int32 content tokens of every document read (the corpus-wide counts)


def pack_segment(docs: Iterable[np.ndarray], params: SegmentParams, seq_len: int, sp, sink) -> SegmentPacked:
    """Held-out stream tokens first, then training rows under the token budget (as `SegmentParams` says).

    A document the held-out part ends in gives its remainder to training (its separator comes from the
    packer); one that ends exactly at the held-out boundary gives nothing more."""
    need = params.eval_tokens
    held: list[np.ndarray] = []
    lengths: list[int] = []
    packer = RowPacker(seq_len, sp.bos, sp.eos, sp.pad, sink)
    budget, count = params.token_limit, 0
    for ids in docs:
        lengths.append(len(ids))
        if need > 0:
            stream = np.concatenate([ids, [sp.eos]]).astype(np.int32)
            held.append(stream[:need])
            need -= len(held[-1])
            ids = stream[len(held[-1]) : -1]
            if len(ids) == 0:
                continue
        if budget is not None and count + len(ids) >= budget:
            ids = ids[: budget - count]
            count += len(ids)
            packer.add(ids)
            break
        count += len(ids)
        packer.add(ids)
    rows = packer.finish()
    held_stream = np.concatenate(held) if held else np.zeros(0, np.int32)
    return SegmentPacked(held_stream, rows, count, np.asarray(lengths, np.int32))


def plan_segments(counts: Sequence[tuple[int, int]], lengths_of, eval_tokens: int, max_tokens: int | None,
                  max_docs: int | None) -> tuple[list[SegmentParams], int]:
    """Each segment's `SegmentParams` from every segment's (documents, content tokens), in order, and
    the corpus's training content tokens. The list stops at the segment where a budget is reached (the
    segments after it are not used); the held-out tokens are the corpus stream's first `eval_tokens`.

    `lengths_of(k)` (segment k's document lengths) is only asked for the few segments the held-out
    part reaches or a document budget cuts, so planning a corpus of 10^9 documents holds one segment's.
    The same loop as `pack_segment`, on lengths only: so what it plans is what packing gives."""
    out: list[SegmentParams] = []
    need, train, docs = eval_tokens, 0, 0
    for k, (n_docs, n_tokens) in enumerate(counts):
        doc_limit = max_docs - docs if max_docs is not None and docs + n_docs >= max_docs else None
        seg_eval, kept = 0, n_tokens
        if need > 0 or doc_limit is not None:
            seg = np.asarray(lengths_of(k), np.int64)[:doc_limit]
            stream = seg + 1  # held-out stream tokens this segment gives, and what each document keeps
            ends = np.cumsum(stream)
            taken = np.clip(need - (ends - stream), 0, stream)
            seg_eval = int(taken.sum())
            kept = int(np.where(taken > 0, np.maximum(stream - taken - 1, 0), seg).sum())
            need -= seg_eval
        docs += n_docs if doc_limit is None else doc_limit
        token_limit = None
        if max_tokens is not None and train + kept >= max_tokens:
            token_limit = max_tokens - train
            train = max_tokens
        else:
            train += kept
        out.append(SegmentParams(seg_eval, token_limit, doc_limit))
        if token_limit is not None or doc_limit is not None:
            break
    return out, train
