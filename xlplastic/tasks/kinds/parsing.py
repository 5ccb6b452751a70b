"""Dependency parsing (UD): a biaffine head per word and a deprel per word, scored as UAS/LAS of a tree.

Arrays: tokens, word_index, word_mask (encoding.encode_words); heads [N, W] (0 = root, else the 1-based
word; -1 when the head word was truncated away), rels [N, W] deprel ids without subtypes (-1: not in the
label map), and labels [N, W] = rels. Predictions are the arc scores and each arc's best rel; `score`
decodes the best tree on host (parse_decode), since an argmax head per word need not form one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xlplastic.config import ModelConfig
from xlplastic.model import dropout
from xlplastic.tasks import formats, metrics
from xlplastic.tasks.encoding import Features, encode_words, strip_subtype, word_array, word_predictions
from xlplastic.tasks.layers import NEG, Dense, f32, gather, nll, param, param_dtype
from xlplastic.tasks.parse_decode import decode_tree
from xlplastic.tasks.task import Task


def encode(examples, tokenizer, specials, seq_len, label_map, **_) -> Features:
    f = encode_words(examples, tokenizer, specials, seq_len)
    kept = f.meta["kept_words"]
    rels = word_array([[label_map.get(strip_subtype(r), -1) for r in e.deprels] for e in examples], f)
    # a head that was truncated away cannot be a training target
    heads = word_array([[h if h <= k else -1 for h in e.heads] for e, k in zip(examples, kept)], f)
    f.arrays.update(labels=rels, heads=heads, rels=rels.copy())
    return f


class BiaffineHead(nnx.Module):
    """Dozat & Manning (2017): arc and rel MLPs on first-subword states, biaffine arc and rel scorers.

    Candidates for a word's head are [root, word 1..W]; root is the bos state (position 0), so the
    candidate index IS the 1-based head. Padding words and self-loops are masked. Biaffine weights start
    at zero (uniform scores), as in the paper.
    """

    def __init__(self, cfg: ModelConfig, n: int, rngs: nnx.Rngs):
        pd, std, D = param_dtype(cfg), cfg.init_std, cfg.hidden_size
        A, R = min(512, 2 * D), min(128, D)
        self.rate = cfg.dropout
        self.arc_dep = Dense(rngs, D, A, ("embed", "mlp"), std, pd)
        self.arc_head = Dense(rngs, D, A, ("embed", "mlp"), std, pd)
        self.rel_dep = Dense(rngs, D, R, ("embed", "mlp"), std, pd)
        self.rel_head = Dense(rngs, D, R, ("embed", "mlp"), std, pd)
        self.arc_bilinear = param(rngs, (A + 1, A), ("hidden", "mlp"), None, pd)  # +1: head-only bias term
        self.rel_bilinear = param(rngs, (n, R + 1, R + 1), ("labels", "hidden", "hidden"), None, pd)

    def __call__(self, h_BxTxD, batch, key):
        """(arc scores [B, W, W+1] with impossible candidates at NEG, rel dep [B, W, R+1], rel head [B, W+1, R+1])."""
        idx_BxW, mask_BxW = batch["word_index"], batch["word_mask"]
        B, W = idx_BxW.shape
        # candidates = [root (bos), word 1..W]; the dependents are the same states without the root
        x = gather(h_BxTxD, jnp.concatenate([jnp.zeros((B, 1), idx_BxW.dtype), idx_BxW], 1)).astype(f32)
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
        at_head = gather(rel_head_BxCxR, jnp.clip(heads_BxW, 0, rel_head_BxCxR.shape[1] - 1))
        return jnp.einsum("bwr,lrs,bws->bwl", rel_dep_BxWxR, self.rel_bilinear[...].astype(f32), at_head)

    def best_rels(self, rel_dep_BxWxR, rel_head_BxCxR):
        """Best rel id [B, W, C] of each word under every head candidate, in the smallest int type that fits.

        The head is only known once the tree is decoded on host, so every candidate's rel goes along.
        """
        logits_BxWxCxL = jnp.einsum("bwr,lrs,bcs->bwcl", rel_dep_BxWxR, self.rel_bilinear[...].astype(f32),
                                    rel_head_BxCxR)
        n = self.rel_bilinear.shape[0]
        return logits_BxWxCxL.argmax(-1).astype(jnp.int8 if n <= 127 else jnp.int16 if n <= 32767 else jnp.int32)


def new_head(cfg: ModelConfig, n: int, rngs: nnx.Rngs, pooling: str = "bos") -> BiaffineHead:
    return BiaffineHead(cfg, n, rngs)  # words are never pooled


def loss(head, h_BxTxD, batch, dropout_key):
    """Arc cross-entropy + rel cross-entropy at the gold head; correct = words whose argmax head is right."""
    arc, rel_dep, rel_head = head(h_BxTxD, batch, dropout_key)
    heads, rels = batch["heads"], batch["rels"]
    ok = batch["word_mask"] * (heads >= 0)
    rel_ok = ok * (rels >= 0)
    rel_nll = nll(head.rel_logits(rel_dep, rel_head, heads), rels)
    loss = (nll(arc, heads) * ok).sum() + (rel_nll * rel_ok).sum()
    return loss, ok.sum(), ((arc.argmax(-1) == heads) * ok).sum()


def predict(head, h_BxTxD, batch) -> dict[str, jax.Array]:
    """arc_scores [B, W, W+1] float32 (NEG: impossible) and rel_by_head [B, W, W+1]: what `score` decodes."""
    arc, rel_dep, rel_head = head(h_BxTxD, batch, None)
    return {"arc_scores": arc.astype(f32), "rel_by_head": head.best_rels(rel_dep, rel_head)}


def decode(predictions, features: Features) -> dict[str, np.ndarray]:
    """heads, rels [N, W] of the best tree over each sentence's kept words (0 after them)."""
    arc, rel = predictions["arc_scores"], predictions["rel_by_head"]
    heads, rels = np.zeros(arc.shape[:2], np.int32), np.zeros(arc.shape[:2], np.int32)
    for n, k in enumerate(features.meta["kept_words"]):
        block = arc[n, :k, : k + 1]
        heads[n, :k] = decode_tree(np.where(block > NEG / 2, block, -np.inf))
        rels[n, :k] = rel[n, np.arange(k), heads[n, :k]]
    return {"heads": heads, "rels": rels}


def score(predictions, features, examples, label_map, *, punct: str = "include", **_) -> dict[str, float]:
    """UAS/LAS (subtypes stripped; punctuation included unless punct="exclude") of the decoded trees.

    `predictions` are `predict`'s scores, or heads/rels [N, W] already decided (gold, another decoder).
    Truncated words count as wrong.
    """
    if "arc_scores" in predictions:
        predictions = decode(predictions, features)
    inv = {v: k for k, v in label_map.items()}
    heads = [[int(h) for h in s] for s in word_predictions(predictions["heads"], features, -1)]
    rels = [[inv.get(int(r), "") for r in s] for s in word_predictions(predictions["rels"], features, -1)]
    gold_heads = [list(e.heads) for e in examples]
    gold_rels = [[strip_subtype(r) for r in e.deprels] for e in examples]
    upos = [list(e.upos) for e in examples] if punct == "exclude" else None
    return metrics.attachment_scores(heads, rels, gold_heads, gold_rels, upos=upos, punct=punct)


def _read(path, *, language=None, max_examples=None):
    return formats.read_conllu(path, max_sentences=max_examples)


TASK = Task(
    kind="parsing",
    headline_metric="las",
    file_format="a CoNLL-U file",
    read_file=_read,
    read_hf_row=formats.tree_from_hf,
    encode=encode,
    new_head=new_head,
    loss=loss,
    predict=predict,
    score=score,
)
