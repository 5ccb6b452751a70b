"""Downstream-task features: examples -> fixed-length device arrays (+ host-side meta), and back to scores.

Why: every task trains one head on the encoder's states, so every task's input must become the same
kind of thing (`tokens` [N, T] with `bos ... eos`, padding only at the end) plus the few arrays its head
needs. `encode` does the tokenisation and subword/word alignment; `score` maps predictions back onto the
examples and calls the metrics, so the numbers are always computed against the original gold data.

Arrays (int32 unless said; leading dim N = features; T = seq_len; W = T - 2):
  every kind            tokens [N, T]: `bos A eos`, pairs `bos A eos eos B eos` (RoBERTa; longest-first
                        truncation, both segments kept)
  classification        label [N]
  pos / ner / parsing   word_index [N, W] position of each word's FIRST subword (0 for padding words),
                        word_mask [N, W] float32, labels [N, W] tag ids (parsing: = rels);
                        parsing also heads [N, W] (0 = root, else 1-based word) and rels [N, W]
  qa                    start, end [N]: answer token positions in this window, 0 (bos) when absent
A negative target (-1) means "not trained on": a label missing from `label_map`, a head word that was
truncated away. Heads ignore such items in the loss; `score` still counts them against the model.

Word alignment: each word is tokenised on its own, the non-initial ones with a leading space, exactly as
in running text (byte-level BPE uses add_prefix_space=False), so subwords equal those of " ".join(words).
Truncation is at word boundaries: words that do not fit in T are dropped and counted in
meta["truncated_words"]; `score` counts them as errors (honest metrics, never "accuracy on what fitted").
QA: sliding windows of the context after the (truncated) question; window starts advance by
min(doc_stride, room) context tokens (BERT's run_squad semantics). meta["offsets"] [N, T, 2] holds char
offsets into the context (whitespace trimmed, so byte-level BPE's leading space is not part of a token)
for context tokens and (-1, -1) elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xlplastic.tasks import metrics

KINDS = ("classification", "pos", "ner", "parsing", "qa")
WORD_KINDS = ("pos", "ner", "parsing")
# the score a report leads with, per kind (what the papers report: XNLI accuracy, NER F1, LAS, SQuAD F1)
HEADLINE_METRIC = {"classification": "accuracy", "pos": "accuracy", "ner": "f1", "parsing": "las", "qa": "f1"}


@dataclass
class Features:
    arrays: dict[str, np.ndarray]  # what goes to the device (batchable along axis 0)
    meta: dict[str, Any]  # host-only (offsets, example_index, truncated word counts, ...)
    num_examples: int


def num_labels(kind: str, label_map: dict[str, int]) -> int:
    """Output size of the head: 2 for QA (start/end), else the number of labels."""
    return 2 if kind == "qa" else len(label_map)


def strip_subtype(rel: str) -> str:
    """UD deprel without its language-specific subtype ("nmod:poss" -> "nmod"), as in CoNLL 2018 LAS."""
    return rel.split(":")[0]


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)] if texts else []


def _fill(rows: list[list[int]], width: int, pad: int, dtype=np.int32) -> np.ndarray:
    out = np.full((len(rows), width), pad, dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _longest_first(na: int, nb: int, budget: int) -> tuple[int, int]:
    """Lengths after trimming the longer segment one token at a time (ties trim the second), like HF."""
    excess = na + nb - budget
    if excess <= 0:
        return na, nb
    if abs(na - nb) >= excess:
        return (na - excess, nb) if na > nb else (na, nb - excess)
    return (budget + 1) // 2, budget // 2


def _classification(examples, tok, sp, T, label_map) -> Features:
    a = _ids(tok, [e.text for e in examples])
    b = _ids(tok, [e.text_pair or "" for e in examples])
    rows = []
    for e, x, y in zip(examples, a, b):
        if e.text_pair is None:
            rows.append([sp.bos, *x[: T - 2], sp.eos])
        else:
            na, nb = _longest_first(len(x), len(y), T - 4)
            rows.append([sp.bos, *x[:na], sp.eos, sp.eos, *y[:nb], sp.eos])
    label = np.array([label_map.get(e.label, -1) for e in examples], np.int32)
    return Features({"tokens": _fill(rows, T, sp.pad), "label": label}, {}, len(examples))


def _words(kind, examples, tok, sp, T, label_map) -> Features:
    N, W = len(examples), T - 2
    pieces = _ids(tok, [w if j == 0 else " " + w for e in examples for j, w in enumerate(e.words)])
    word_index, word_mask = np.zeros((N, W), np.int32), np.zeros((N, W), np.float32)
    labels, heads = np.zeros((N, W), np.int32), np.zeros((N, W), np.int32)
    rows, kept_words, cursor = [], np.zeros(N, np.int32), 0
    for n, e in enumerate(examples):
        row = [sp.bos]
        for p in pieces[cursor : cursor + len(e.words)]:
            p = p or [sp.unk]  # a word the normaliser erased still needs a position
            if len(row) + len(p) > T - 1:
                break
            word_index[n, kept_words[n]] = len(row)
            row += p
            kept_words[n] += 1
        cursor += len(e.words)
        rows.append(row + [sp.eos])
        k = kept_words[n]
        word_mask[n, :k] = 1.0
        tags = [strip_subtype(r) for r in e.deprels] if kind == "parsing" else e.tags
        labels[n, :k] = [label_map.get(t, -1) for t in tags[:k]]
        if kind == "parsing":  # a head that was truncated away cannot be a training target
            heads[n, :k] = [h if h <= k else -1 for h in e.heads[:k]]
    arrays = {"tokens": _fill(rows, T, sp.pad), "word_index": word_index, "word_mask": word_mask, "labels": labels}
    if kind == "parsing":
        arrays.update(heads=heads, rels=labels.copy())
    num_words = np.array([len(e.words) for e in examples], np.int32)
    return Features(arrays, {"kept_words": kept_words, "truncated_words": num_words - kept_words}, N)


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


def _qa(examples, tok, sp, T, doc_stride, max_query_len) -> Features:
    questions = _ids(tok, [e.question for e in examples])
    contexts = tok.encode_batch([e.context for e in examples], add_special_tokens=False) if examples else []
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
    arrays = {"tokens": _fill(rows, T, sp.pad), "start": np.array(starts, np.int32), "end": np.array(ends, np.int32)}
    meta = {"example_index": np.array(example_index, np.int32), "offsets": np.array(offsets, np.int32).reshape(-1, T, 2)}
    return Features(arrays, meta, len(examples))


def encode(kind, examples, tokenizer, specials, seq_len, label_map, *, doc_stride=128, max_query_len=64) -> Features:
    """Tokenises `examples` of task `kind` into `Features` (see the module docstring for the layout)."""
    examples = list(examples)
    if kind == "classification":
        return _classification(examples, tokenizer, specials, seq_len, label_map)
    if kind in WORD_KINDS:
        return _words(kind, examples, tokenizer, specials, seq_len, label_map)
    if kind == "qa":
        return _qa(examples, tokenizer, specials, seq_len, doc_stride, max_query_len)
    raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(KINDS)}")


# ---------------------------------------------------------------------------------------------- scoring


def _word_predictions(ids: np.ndarray, features: Features, examples, fill) -> list[list]:
    """Per-example predictions over ALL words: kept words from `ids`, truncated ones get `fill`."""
    kept, trunc = features.meta["kept_words"], features.meta["truncated_words"]
    return [list(ids[n, : kept[n]]) + [fill] * int(trunc[n]) for n in range(len(examples))]


def _decode_qa(pred, features: Features, examples, max_answer_len: int, n_best: int) -> dict[str, str]:
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


def score(kind, predictions, features: Features, examples, label_map, *, max_answer_len=30, n_best=20,
          punct: str = "include") -> dict[str, float]:
    """Task metrics from `predictions` (numpy, concatenated over all N features, padding rows dropped).

    classification/pos: accuracy; ner: span F1/precision/recall + token accuracy; parsing: UAS/LAS with
    punctuation included (CoNLL 2018), subtypes stripped; qa: SQuAD exact match / F1 (percent).
    Words truncated away by `encode` count as wrong (NER: predicted "O", so their entities are missed).
    """
    examples = list(examples)
    inv = {v: k for k, v in label_map.items()}
    if kind == "classification":
        return {"accuracy": metrics.accuracy([inv.get(int(p)) for p in predictions["label"]], [e.label for e in examples])}
    if kind in ("pos", "ner"):
        gold = [list(e.tags) for e in examples]
        pred = [[inv.get(int(p)) for p in s] for s in _word_predictions(predictions["labels"], features, examples, -1)]
        out = {"accuracy": metrics.token_accuracy(pred, gold)}
        if kind == "ner":
            out.update(metrics.span_f1([[p or "O" for p in s] for s in pred], gold))
        return out
    if kind == "parsing":
        heads = [[int(h) for h in s] for s in _word_predictions(predictions["heads"], features, examples, -1)]
        rels = [[inv.get(int(r), "") for r in s] for s in _word_predictions(predictions["rels"], features, examples, -1)]
        gold_heads = [list(e.heads) for e in examples]
        gold_rels = [[strip_subtype(r) for r in e.deprels] for e in examples]
        upos = [list(e.upos) for e in examples] if punct == "exclude" else None
        return metrics.attachment_scores(heads, rels, gold_heads, gold_rels, upos=upos, punct=punct)
    if kind == "qa":
        return metrics.squad_scores(_decode_qa(predictions, features, examples, max_answer_len, n_best), examples)
    raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(KINDS)}")
