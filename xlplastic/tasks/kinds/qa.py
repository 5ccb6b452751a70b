"""Extractive QA (SQuAD v1.1, XQuAD, MLQA): an answer span per question, from start/end logits per token.

Arrays: tokens [N, T] `bos question eos eos context-window eos`, one feature per window; start, end [N]
the answer's token positions in this window, 0 (bos) when it is not inside. Windows of the context after
the (truncated) question start min(doc_stride, room) context tokens apart (BERT's run_squad semantics).
Meta: example_index [N]; offsets [N, T, 2] char offsets into the context (whitespace trimmed, so
byte-level BPE's leading space is not part of a token) for context tokens and (-1, -1) elsewhere.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from xlplastic.config import ModelConfig
from xlplastic.tasks import formats, metrics
from xlplastic.tasks.encoding import Features, pad_rows, token_ids
from xlplastic.tasks.layers import Dense, f32, masked_sums, nll, param_dtype
from xlplastic.tasks.task import Task


def _char_spans(offsets, text: str) -> list[tuple[int, int]]:
    """Token char spans with surrounding whitespace trimmed (byte-level BPE includes the leading space)."""
    out = []
    for s, e in offsets:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        out.append((s, e))
    return out


def _answer_tokens(spans, answers) -> tuple[int, int] | None:
    """First and last context token overlapping the first answer's chars (None: no locatable answer)."""
    if not answers or not answers[0][0]:
        return None
    text, a = answers[0]
    b = a + len(text)
    inside = [i for i, (s, e) in enumerate(spans) if s < b and e > a]
    return (inside[0], inside[-1]) if inside else None


def encode(examples, tokenizer, specials, seq_len, label_map, *, doc_stride=128, max_query_len=64, **_) -> Features:
    sp, T = specials, seq_len
    questions = token_ids(tokenizer, [e.question for e in examples])
    contexts = tokenizer.encode_batch([e.context for e in examples], add_special_tokens=False) if examples else []
    rows, starts, ends, example_index, offsets = [], [], [], [], []
    for i, (e, q, c) in enumerate(zip(examples, questions, contexts)):
        q = q[:max_query_len]
        room = T - len(q) - 4
        if room < 1:
            raise ValueError(f"seq_len {T} leaves no room for context after a {len(q)}-token question")
        spans, ids = _char_spans(c.offsets, e.context), c.ids
        answer = _answer_tokens(spans, e.answers)
        base, lo = len(q) + 3, 0  # position of the window's first context token
        while True:
            hi = min(lo + room, len(ids))
            rows.append([sp.bos, *q, sp.eos, sp.eos, *ids[lo:hi], sp.eos])
            off = np.full((T, 2), -1, np.int32)
            off[base : base + hi - lo] = spans[lo:hi]
            offsets.append(off)
            inside = answer is not None and lo <= answer[0] and answer[1] < hi
            starts.append(base + answer[0] - lo if inside else 0)
            ends.append(base + answer[1] - lo if inside else 0)
            example_index.append(i)
            if hi >= len(ids):
                break
            lo += min(doc_stride, room)
    arrays = {"tokens": pad_rows(rows, T, sp.pad), "start": np.array(starts, np.int32), "end": np.array(ends, np.int32)}
    meta = {"example_index": np.array(example_index, np.int32), "offsets": np.array(offsets, np.int32).reshape(-1, T, 2)}
    return Features(arrays, meta, len(examples))


class QAHead(nnx.Module):
    """Linear D->2: start and end logits per token (softmax over all T positions, as in BERT's SQuAD)."""

    def __init__(self, cfg: ModelConfig, n: int, rngs: nnx.Rngs):
        self.out = Dense(rngs, cfg.hidden_size, n, ("embed", "labels"), cfg.init_std, param_dtype(cfg))

    def __call__(self, h_BxTxD, batch, key):
        logits = self.out(h_BxTxD)
        return logits[..., 0], logits[..., 1]  # [B, T] each


def new_head(cfg: ModelConfig, n: int, rngs: nnx.Rngs, pooling: str = "bos") -> QAHead:
    return QAHead(cfg, n, rngs)  # tokens are never pooled


def loss(head, h_BxTxD, batch, dropout_key):
    """Mean of the start and end cross-entropies per feature; correct = start and end both right."""
    start, end = head(h_BxTxD, batch, dropout_key)
    items = 0.5 * (nll(start, batch["start"]) + nll(end, batch["end"]))
    right = (start.argmax(-1) == batch["start"]) & (end.argmax(-1) == batch["end"])
    return masked_sums(items, batch["start"] >= 0, right)


def predict(head, h_BxTxD, batch) -> dict[str, jax.Array]:
    """start_logits, end_logits [B, T] float32: spans are chosen on host, across a question's windows."""
    start, end = head(h_BxTxD, batch, None)
    return {"start_logits": start.astype(f32), "end_logits": end.astype(f32)}


def _best_spans(pred, features: Features, examples, max_answer_len: int, n_best: int) -> dict[str, str]:
    """Best span per example over all its windows: top n_best starts x ends, start <= end, context only."""
    best: dict[int, tuple[float, str]] = {}
    for f, i in enumerate(features.meta["example_index"]):
        off = features.meta["offsets"][f]
        ctx = off[:, 0] >= 0
        sl = np.where(ctx, pred["start_logits"][f], -np.inf)
        el = np.where(ctx, pred["end_logits"][f], -np.inf)
        s = np.argsort(-sl, kind="stable")[:n_best]
        e = np.argsort(-el, kind="stable")[:n_best]
        total = sl[s][:, None] + el[e][None, :]
        ok = (e[None] >= s[:, None]) & (e[None] - s[:, None] < max_answer_len) & np.isfinite(total)
        if not ok.any():
            continue
        a, b = np.unravel_index(np.argmax(np.where(ok, total, -np.inf)), total.shape)
        if i not in best or total[a, b] > best[i][0]:
            text = examples[i].context[off[s[a], 0] : off[e[b], 1]].strip()
            best[i] = (float(total[a, b]), text)
    return {ex.id: best.get(i, (0.0, ""))[1] for i, ex in enumerate(examples)}


def score(predictions, features, examples, label_map, *, max_answer_len=30, n_best=20, **_) -> dict[str, float]:
    """SQuAD v1.1 exact match and F1 (percent) of the best span per question."""
    return metrics.squad_scores(_best_spans(predictions, features, examples, max_answer_len, n_best), examples)


def _read(path, *, language=None, max_examples=None):
    return formats.read_squad(path, max_examples=max_examples)


TASK = Task(
    kind="qa",
    headline_metric="f1",
    file_format="a SQuAD v1.1 JSON file",
    read_file=_read,
    read_hf_row=formats.qa_from_hf,
    encode=encode,
    new_head=new_head,
    loss=loss,
    predict=predict,
    score=score,
    num_labels=lambda label_map: 2,  # start and end
)
