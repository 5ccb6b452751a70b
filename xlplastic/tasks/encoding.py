"""Encoding shared by the task kinds: the `Features` record, tokenisation helpers and word alignment.

Why: every task trains one head on the encoder's states, so every task's input must become the same
kind of thing (`tokens` [N, T] with `bos ... eos`, padding only at the end) plus the few arrays its head
needs; these are the pieces the kinds in tasks/kinds/ build theirs from.

Arrays (int32 unless said; leading dim N = features; T = seq_len; W = T - 2):
  every kind            tokens [N, T]: `bos A eos`, pairs `bos A eos eos B eos` (RoBERTa)
  word-level kinds      word_index [N, W] position of each word's FIRST subword (0 for padding words),
                        word_mask [N, W] float32, plus the kind's per-word targets (`word_array`)
A negative target (-1) means "not trained on": a label missing from `label_map`, a head word that was
truncated away. Heads ignore such items in the loss; scores still count them against the model.

Word alignment: each word is tokenised on its own, the non-initial ones with a leading space, exactly as
in running text (byte-level BPE uses add_prefix_space=False), so subwords equal those of " ".join(words).
Truncation is at word boundaries: words that do not fit in T are dropped and counted in
meta["truncated_words"]; scores count them as errors (honest metrics, never "accuracy on what fitted").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Features:
    arrays: dict[str, np.ndarray]  # what goes to the device (batchable along axis 0)
    meta: dict[str, Any]  # host-only (offsets, example_index, truncated word counts, ...)
    num_examples: int


def strip_subtype(rel: str) -> str:
    """UD deprel without its language-specific subtype ("nmod:poss" -> "nmod"), as in CoNLL 2018 LAS."""
    return rel.split(":")[0]


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Subword ids of each text, without specials (one batched call: fast tokenizers parallelise it)."""
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)] if texts else []


def pad_rows(rows: list[list[int]], width: int, pad: int, dtype=np.int32) -> np.ndarray:
    """Ragged rows -> [len(rows), width], padded at the end."""
    out = np.full((len(rows), width), pad, dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def encode_words(examples, tokenizer, specials, seq_len) -> Features:
    """tokens, word_index and word_mask of word-level examples (`.words`); meta kept_words/truncated_words."""
    N, T = len(examples), seq_len
    W, sp = T - 2, specials
    pieces = token_ids(tokenizer, [w if j == 0 else " " + w for e in examples for j, w in enumerate(e.words)])
    word_index, word_mask = np.zeros((N, W), np.int32), np.zeros((N, W), np.float32)
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
        word_mask[n, : kept_words[n]] = 1.0
    num_words = np.array([len(e.words) for e in examples], np.int32)
    arrays = {"tokens": pad_rows(rows, T, sp.pad), "word_index": word_index, "word_mask": word_mask}
    return Features(arrays, {"kept_words": kept_words, "truncated_words": num_words - kept_words}, N)


def word_array(values: list[list[int]], features: Features) -> np.ndarray:
    """Per-word targets [N, W] int32: each example's values for its kept words, 0 after them."""
    out = np.zeros(features.arrays["word_index"].shape, np.int32)
    for n, (v, k) in enumerate(zip(values, features.meta["kept_words"])):
        out[n, :k] = v[:k]
    return out


def word_predictions(ids: np.ndarray, features: Features, fill) -> list[list]:
    """Per-example predictions over ALL words: kept words from `ids` [N, W], truncated ones get `fill`."""
    kept, trunc = features.meta["kept_words"], features.meta["truncated_words"]
    return [list(ids[n, : kept[n]]) + [fill] * int(trunc[n]) for n in range(len(kept))]
