"""Sentence(-pair) classification (XNLI and the like): one label per example.

Arrays: tokens [N, T] (`bos A eos`, pairs `bos A eos eos B eos` with longest-first truncation that keeps
both segments, as RoBERTa), label [N] (-1: not in the label map).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xlplastic.config import ModelConfig
from xlplastic.model import dropout
from xlplastic.tasks import formats, metrics
from xlplastic.tasks.encoding import Features, pad_rows, token_ids
from xlplastic.tasks.layers import Dense, f32, masked_sums, nll, param_dtype, split_keys
from xlplastic.tasks.task import Task


def _longest_first(na: int, nb: int, budget: int) -> tuple[int, int]:
    """Lengths after trimming the longer segment one token at a time (ties trim the second), like HF."""
    excess = na + nb - budget
    if excess <= 0:
        return na, nb
    if abs(na - nb) >= excess:
        return (na - excess, nb) if na > nb else (na, nb - excess)
    return (budget + 1) // 2, budget // 2


def encode(examples, tokenizer, specials, seq_len, label_map, **_) -> Features:
    sp, T = specials, seq_len
    a = token_ids(tokenizer, [e.text for e in examples])
    b = token_ids(tokenizer, [e.text_pair or "" for e in examples])
    rows = []
    for e, x, y in zip(examples, a, b):
        if e.text_pair is None:
            rows.append([sp.bos, *x[: T - 2], sp.eos])
        else:
            na, nb = _longest_first(len(x), len(y), T - 4)
            rows.append([sp.bos, *x[:na], sp.eos, sp.eos, *y[:nb], sp.eos])
    label = np.array([label_map.get(e.label, -1) for e in examples], np.int32)
    return Features({"tokens": pad_rows(rows, T, sp.pad), "label": label}, {}, len(examples))


def _masked_mean(h_BxTxD, m_BxT):
    m = m_BxT.astype(f32)
    return (h_BxTxD * m[..., None]).sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1.0)


class ClassificationHead(nnx.Module):
    """RoBERTa's head: dropout, dense + tanh on the pooled state, dropout, out -> labels. Pooling: the bos
    state; or the mean over `pool_mask`; or, for pairs (`pool_a`, `pool_b`: the two segments' tokens),
    each segment's mean state u, v combined as [u, v, |u - v|, u * v] (InferSent / Sentence-BERT), so
    the head compares two sentence representations the body computed."""

    def __init__(self, cfg: ModelConfig, n: int, rngs: nnx.Rngs, pooling: str = "bos"):
        pd, std, D = param_dtype(cfg), cfg.init_std, cfg.hidden_size
        self.rate = cfg.dropout
        self.dense = Dense(rngs, 4 * D if pooling == "pair" else D, D, ("embed", "hidden"), std, pd)
        self.out = Dense(rngs, D, n, ("hidden", "labels"), std, pd)

    def __call__(self, h_BxTxD, batch, key):
        k1, k2 = split_keys(key, 2)
        h = h_BxTxD.astype(f32)
        if "pool_a" in batch:
            u, v = _masked_mean(h, batch["pool_a"]), _masked_mean(h, batch["pool_b"])
            pooled = jnp.concatenate([u, v, jnp.abs(u - v), u * v], -1)
        elif "pool_mask" in batch:  # mean over the tokens (task.pooling: mean) instead of the bos state
            pooled = _masked_mean(h, batch["pool_mask"])
        else:
            pooled = h[:, 0]
        x = jnp.tanh(self.dense(dropout(pooled, self.rate, k1)))
        return self.out(dropout(x, self.rate, k2))  # [B, L]


def loss(head, h_BxTxD, batch, dropout_key):
    """Cross-entropy per example; correct = argmax label right."""
    logits, gold = head(h_BxTxD, batch, dropout_key), batch["label"]
    return masked_sums(nll(logits, gold), gold >= 0, logits.argmax(-1) == gold)


def predict(head, h_BxTxD, batch) -> dict[str, jax.Array]:
    """label [B]: the argmax class id."""
    return {"label": head(h_BxTxD, batch, None).argmax(-1).astype(jnp.int32)}


def score(predictions, features, examples, label_map, **_) -> dict[str, float]:
    inv = {v: k for k, v in label_map.items()}
    return {"accuracy": metrics.accuracy([inv.get(int(p)) for p in predictions["label"]], [e.label for e in examples])}


def _read(path, *, language=None, max_examples=None):
    return formats.read_classification(path, language=language, max_examples=max_examples)


TASK = Task(
    kind="classification",
    headline_metric="accuracy",
    file_format="a TSV/JSONL file of labelled sentence(s)",
    read_file=_read,
    read_hf_row=formats.classification_from_hf,
    encode=encode,
    new_head=ClassificationHead,
    loss=loss,
    predict=predict,
    score=score,
    reads_language=True,
)
