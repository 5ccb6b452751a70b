"""Task heads on the encoder's hidden states: classification, tagging (POS/NER), biaffine parsing, QA.

Why: fine-tuning adds one small module per task; the trainer treats them alike through `create_head`,
`head_loss` (jit-able sums, so batches and devices add up exactly) and `head_predict`. Every parameter
carries logical axes like the encoder's. Heads compute in float32 (they are small next to the encoder).

All heads take (h_BxTxD, batch, dropout_key or None) and read the batch arrays of `features.encode`.
Items with a negative target (label -1, head -1, start -1) and padding words (word_mask 0) are left out
of the loss, of the count and of the correct count, so padding rows can be made inert that way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from xlplastic.config import ModelConfig
from xlplastic.model import _DTYPES, _param, dropout

__all__ = ["create_head", "head_loss", "head_predict"]

NEG = -1e9  # logit of an impossible choice (finite: no NaN in log_softmax)
f32 = jnp.float32


def _keys(key, n):
    return tuple(jax.random.split(key, n)) if key is not None else (None,) * n


def _gather(h_BxTxD, idx_BxK):
    return jnp.take_along_axis(h_BxTxD, idx_BxK[..., None], axis=1)


def _nll(logits, target):
    """-log p(target) per item; negative targets are clipped here and must be masked by the caller."""
    lp = jax.nn.log_softmax(logits.astype(f32), axis=-1)
    return -jnp.take_along_axis(lp, jnp.clip(target, 0, logits.shape[-1] - 1)[..., None], axis=-1)[..., 0]


class _Dense(nnx.Module):
    """x @ kernel + bias with logical axes (in_axis, out_axis); computes in float32."""

    def __init__(self, rngs, d_in, d_out, axes, std, pd, zero=False):
        self.kernel = _param(rngs, (d_in, d_out), axes, None if zero else std, pd)
        self.bias = _param(rngs, (d_out,), axes[1:], None, pd)

    def __call__(self, x):
        return x.astype(f32) @ self.kernel[...].astype(f32) + self.bias[...].astype(f32)


class ClassificationHead(nnx.Module):
    """RoBERTa's head: dropout, dense + tanh on the pooled state, dropout, out -> labels. Pooling: the bos
    state; or the mean over `pool_mask`; or, for pairs (`pool_a`, `pool_b`: the two segments' tokens),
    each segment's mean state u, v combined as [u, v, |u - v|, u * v] (InferSent / Sentence-BERT), so
    the head compares two sentence representations the body computed."""

    def __init__(self, cfg: ModelConfig, n: int, rngs: nnx.Rngs, pooling: str = "bos"):
        pd, std, D = _DTYPES[cfg.param_dtype], cfg.init_std, cfg.hidden_size
        self.rate = cfg.dropout
        self.dense = _Dense(rngs, 4 * D if pooling == "pair" else D, D, ("embed", "hidden"), std, pd)
        self.out = _Dense(rngs, D, n, ("hidden", "labels"), std, pd)

    def __call__(self, h_BxTxD, batch, key):
        k1, k2 = _keys(key, 2)
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


def _masked_mean(h_BxTxD, m_BxT):
    m = m_BxT.astype(f32)
    return (h_BxTxD * m[..., None]).sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1.0)


class TaggingHead(nnx.Module):
    """Dropout + linear D->labels on each word's first-subword state (POS and NER)."""

    def __init__(self, cfg: ModelConfig, n: int, rngs: nnx.Rngs):
        self.rate = cfg.dropout
        self.out = _Dense(rngs, cfg.hidden_size, n, ("embed", "labels"), cfg.init_std, _DTYPES[cfg.param_dtype])

    def __call__(self, h_BxTxD, batch, key):
        x = _gather(h_BxTxD, batch["word_index"]).astype(f32)
        return self.out(dropout(x, self.rate, key))  # [B, W, L]


class BiaffineHead(nnx.Module):
    """Dozat & Manning (2017): arc and rel MLPs on first-subword states, biaffine arc and rel scorers.

    Candidates for a word's head are [root, word 1..W]; root is the bos state (position 0), so the
    candidate index IS the 1-based head. Padding words and self-loops are masked. Prediction is the argmax
    head per word and each word's rel at its predicted head: no MST decoding, so the output need not be a
    well-formed tree (UAS/LAS are per-word scores and need none). Biaffine weights start at zero
    (uniform scores), as in the paper.
    """

    def __init__(self, cfg: ModelConfig, n: int, rngs: nnx.Rngs):
        pd, std, D = _DTYPES[cfg.param_dtype], cfg.init_std, cfg.hidden_size
        A, R = min(512, 2 * D), min(128, D)
        self.rate = cfg.dropout
        self.arc_dep = _Dense(rngs, D, A, ("embed", "mlp"), std, pd)
        self.arc_head = _Dense(rngs, D, A, ("embed", "mlp"), std, pd)
        self.rel_dep = _Dense(rngs, D, R, ("embed", "mlp"), std, pd)
        self.rel_head = _Dense(rngs, D, R, ("embed", "mlp"), std, pd)
        self.arc_bilinear = _param(rngs, (A + 1, A), ("hidden", "mlp"), None, pd)  # +1: head-only bias term
        self.rel_bilinear = _param(rngs, (n, R + 1, R + 1), ("labels", "hidden", "hidden"), None, pd)

    def __call__(self, h_BxTxD, batch, key):
        """(arc scores [B, W, W+1] with impossible candidates at NEG, rel dep [B, W, R+1], rel head [B, W+1, R+1])."""
        idx_BxW, mask_BxW = batch["word_index"], batch["word_mask"]
        B, W = idx_BxW.shape
        # candidates = [root (bos), word 1..W]; the dependents are the same states without the root
        x = _gather(h_BxTxD, jnp.concatenate([jnp.zeros((B, 1), idx_BxW.dtype), idx_BxW], 1)).astype(f32)
        mlps = (self.arc_dep, self.arc_head, self.rel_dep, self.rel_head)
        y = jnp.concatenate([jax.nn.leaky_relu(m(x), 0.1) for m in mlps], -1)
        y = dropout(y, self.rate, key)  # one draw for all four MLPs (each dropout site is a costly compile)
        A, R = self.arc_head.kernel.shape[1], self.rel_head.kernel.shape[1]
        one = jnp.ones((B, W + 1, 1), f32)  # appended to a side, a constant 1 gives the affine terms
        arc_dep = jnp.concatenate([y[:, 1:, :A], one[:, 1:]], -1)
        arc_head = y[..., A : 2 * A]
        rel_dep = jnp.concatenate([y[:, 1:, 2 * A : 2 * A + R], one[:, 1:]], -1)
        rel_head = jnp.concatenate([y[..., 2 * A + R :], one], -1)
        arc_BxWxC = jnp.einsum("bwa,ac,bjc->bwj", arc_dep, self.arc_bilinear[...].astype(f32), arc_head)
        cand_ok = jnp.concatenate([jnp.ones((B, 1), bool), mask_BxW > 0], 1)[:, None, :]
        not_self = ~jnp.eye(W, W + 1, k=1, dtype=bool)[None]
        return jnp.where(cand_ok & not_self, arc_BxWxC, NEG), rel_dep, rel_head

    def rel_logits(self, rel_dep_BxWxR, rel_head_BxCxR, heads_BxW):
        """Rel scores [B, W, L] of each word with the given head candidates (0 = root)."""
        at_head = _gather(rel_head_BxCxR, jnp.clip(heads_BxW, 0, rel_head_BxCxR.shape[1] - 1))
        return jnp.einsum("bwr,lrs,bws->bwl", rel_dep_BxWxR, self.rel_bilinear[...].astype(f32), at_head)


class QAHead(nnx.Module):
    """Linear D->2: start and end logits per token (softmax over all T positions, as in BERT's SQuAD)."""

    def __init__(self, cfg: ModelConfig, n: int, rngs: nnx.Rngs):
        self.out = _Dense(rngs, cfg.hidden_size, n, ("embed", "labels"), cfg.init_std, _DTYPES[cfg.param_dtype])

    def __call__(self, h_BxTxD, batch, key):
        logits = self.out(h_BxTxD)
        return logits[..., 0], logits[..., 1]  # [B, T] each


_HEADS = {"classification": ClassificationHead, "pos": TaggingHead, "ner": TaggingHead, "parsing": BiaffineHead, "qa": QAHead}


def create_head(kind: str, model_cfg: ModelConfig, num_labels: int, seed: int, pooling: str = "bos") -> nnx.Module:
    if kind not in _HEADS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(_HEADS)}")
    if kind == "classification":
        return ClassificationHead(model_cfg, num_labels, nnx.Rngs(params=seed), pooling)
    return _HEADS[kind](model_cfg, num_labels, nnx.Rngs(params=seed))


def head_loss(kind, head, h_BxTxD, batch, dropout_key):
    """(summed loss, scored items, correct items) as float32 scalars; divide the sums after adding them up.

    Items: examples (classification, QA features) or real words (tagging, parsing). Parsing loss = arc
    cross-entropy + rel cross-entropy at the gold head; correct = words with the right head. QA loss is the
    mean of start and end cross-entropies; correct = start and end both right.
    """
    if kind == "classification":
        logits, gold = head(h_BxTxD, batch, dropout_key), batch["label"]
        ok = (gold >= 0).astype(f32)
        return (_nll(logits, gold) * ok).sum(), ok.sum(), ((logits.argmax(-1) == gold) * ok).sum()
    if kind in ("pos", "ner"):
        logits, gold = head(h_BxTxD, batch, dropout_key), batch["labels"]
        ok = batch["word_mask"] * (gold >= 0)
        return (_nll(logits, gold) * ok).sum(), ok.sum(), ((logits.argmax(-1) == gold) * ok).sum()
    if kind == "parsing":
        arc, rel_dep, rel_head = head(h_BxTxD, batch, dropout_key)
        heads, rels = batch["heads"], batch["rels"]
        ok = batch["word_mask"] * (heads >= 0)
        rel_ok = ok * (rels >= 0)
        rel_nll = _nll(head.rel_logits(rel_dep, rel_head, heads), rels)
        loss = (_nll(arc, heads) * ok).sum() + (rel_nll * rel_ok).sum()
        return loss, ok.sum(), ((arc.argmax(-1) == heads) * ok).sum()
    if kind == "qa":
        start, end = head(h_BxTxD, batch, dropout_key)
        ok = (batch["start"] >= 0).astype(f32)
        loss = 0.5 * (_nll(start, batch["start"]) + _nll(end, batch["end"]))
        right = (start.argmax(-1) == batch["start"]) & (end.argmax(-1) == batch["end"])
        return (loss * ok).sum(), ok.sum(), (right * ok).sum()
    raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(_HEADS)}")


def head_predict(kind, head, h_BxTxD, batch) -> dict[str, jax.Array]:
    """Deterministic predictions: label [B] | labels [B, W] | heads, rels [B, W] | start/end_logits [B, T]."""
    if kind == "classification":
        return {"label": head(h_BxTxD, batch, None).argmax(-1).astype(jnp.int32)}
    if kind in ("pos", "ner"):
        return {"labels": head(h_BxTxD, batch, None).argmax(-1).astype(jnp.int32)}
    if kind == "parsing":
        arc, rel_dep, rel_head = head(h_BxTxD, batch, None)
        heads = arc.argmax(-1).astype(jnp.int32)
        return {"heads": heads, "rels": head.rel_logits(rel_dep, rel_head, heads).argmax(-1).astype(jnp.int32)}
    if kind == "qa":
        start, end = head(h_BxTxD, batch, None)
        return {"start_logits": start.astype(f32), "end_logits": end.astype(f32)}
    raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(_HEADS)}")
