"""How much of a vocabulary's embedding geometry is its words' classes: a diagnostic for relearning.

Why: relearned embeddings carry a structural task over only if they say what class each word is (the
task body computes on classes, not on spellings), and the MLM loss alone does not show it. Two numbers per
embedding matrix, over the words that have a gold tag and a token of their own:
  class_r2   the share of the variance of the unit-normalised, centred rows explained by the class means
  class_1nn  the fraction of words whose nearest other word (cosine) has the same class
and, given a reference matrix (the source language's embeddings of the same frozen body), a third:
  source_class_1nn  the fraction of words whose nearest reference word has the same class: whether the
             rows sit where the body's source-language classes are, not only in tidy clusters of their own
             (what a body task-adapted on the source embeddings sees). The oracle scores 1 by construction.
Computed on device in float32 with HIGHEST-precision matmuls; the neighbour search runs in blocks of rows,
so no V x V matrix is built.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from xlplastic.errors import UserError

METRICS = ("class_r2", "class_1nn", "source_class_1nn")
MIN_WORDS = 10  # fewer tagged words than this in a vocabulary: no score (it would be noise)


def word_classes(paths: Sequence) -> dict[str, str]:
    """Each word form's most frequent UPOS tag in the CoNLL-U files (ties: the tag seen first)."""
    from xlplastic.tasks.formats import read_pos

    counts: dict[str, Counter] = defaultdict(Counter)
    for p in paths:
        for ex in read_pos(p):
            for w, t in zip(ex.words, ex.tags):
                counts[w][t] += 1
    return {w: c.most_common(1)[0][0] for w, c in counts.items()}


def tagged_rows(tokenizer, classes: dict[str, str]) -> tuple[np.ndarray, list[str]]:
    """(token ids, their classes) of the tagged words that are one token of `tokenizer`."""
    ids, labels = [], []
    for w, c in sorted(classes.items()):
        i = tokenizer.token_to_id(w)
        if i is not None:
            ids.append(i)
            labels.append(c)
    return np.asarray(ids, np.int32), labels


@jax.jit
def _r2(x, onehot):
    counts = onehot.sum(0)
    means = (onehot.T @ x) / jnp.maximum(counts, 1.0)[:, None]
    within = jnp.sum((x - onehot @ means) ** 2)
    return 1.0 - within / jnp.sum(x**2)


@jax.jit
def _nn_block(xb, x, start):
    """Nearest row of x for each row of xb (rows start.. of x itself: itself excluded)."""
    sims = jnp.matmul(xb, x.T, precision=lax.Precision.HIGHEST)
    self_idx = start + jnp.arange(xb.shape[0])
    sims = sims.at[jnp.arange(xb.shape[0]), self_idx].set(-jnp.inf)
    return jnp.argmax(sims, axis=1)


@jax.jit
def _nn_other(xb, r):
    return jnp.argmax(jnp.matmul(xb, r.T, precision=lax.Precision.HIGHEST), axis=1)


def _unit_rows(embeddings, ids, labels, what: str):
    if len(ids) != len(labels):
        raise UserError(f"class_structure: {what} has {len(ids)} rows but {len(labels)} labels; expected one class per row")
    if len(ids) < MIN_WORDS:
        raise UserError(f"class_structure: {len(ids)} tagged words of {what} have a token; expected at least {MIN_WORDS}")
    x = jnp.asarray(embeddings, jnp.float32)[jnp.asarray(ids)]
    return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_structure(embeddings, ids: np.ndarray, labels: Sequence[str], *, reference=None,
                    block: int = 1024) -> dict[str, float]:
    """{class_r2, class_1nn} of the rows `ids` of `embeddings` [V, D] with classes `labels`; with
    `reference=(embeddings [V', D], ids, labels)` also source_class_1nn against the reference's rows."""
    x = _unit_rows(embeddings, ids, labels, "the matrix")
    names = sorted(set(labels) | (set(reference[2]) if reference is not None else set()))
    y = np.asarray([names.index(c) for c in labels])
    onehot = jax.nn.one_hot(jnp.asarray(y), len(names), dtype=jnp.float32)
    nn = np.concatenate([np.asarray(_nn_block(x[s:s + block], x, s)) for s in range(0, len(y), block)])
    out = {"class_r2": float(_r2(x - x.mean(0), onehot)), "class_1nn": float(np.mean(y[nn] == y))}
    if reference is not None:
        ref_emb, ref_ids, ref_labels = reference
        r = _unit_rows(ref_emb, ref_ids, ref_labels, "the reference")
        if r.shape[1] != x.shape[1]:
            raise UserError(f"class_structure: the reference rows have width {r.shape[1]}, the matrix {x.shape[1]}; "
                            "expected the same body's embeddings")
        ry = np.asarray([names.index(c) for c in ref_labels])
        near = np.concatenate([np.asarray(_nn_other(x[s:s + block], r)) for s in range(0, len(y), block)])
        out["source_class_1nn"] = float(np.mean(ry[near] == y))
    return out
