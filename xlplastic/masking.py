"""On-device MLM masking: 15% of maskable tokens, 80% <mask> / 10% random / 10% unchanged.

Runs inside the jitted step from a key folded with the step, so masks are a function of (seed, step)
and never cross the host. Each sequence predicts exactly round(mask_prob * maskable) positions (as
BERT's `max_predictions_per_seq` recipe does), padded to a static `P`, so the vocabulary projection is
computed at masked positions only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Masked(NamedTuple):
    inputs_BxT: jax.Array  # tokens with masking applied
    positions_BxP: jax.Array  # indices of predicted positions (padded)
    targets_BxP: jax.Array  # original tokens at those positions
    weights_BxP: jax.Array  # 1.0 for real predictions, 0.0 for padding


def max_predictions(seq_len: int, mask_prob: float) -> int:
    return max(1, math.ceil(seq_len * mask_prob))


def special_mask(tokens_BxT, special_ids: tuple[int, ...]):
    m = jnp.zeros(tokens_BxT.shape, bool)
    for s in special_ids:
        m = m | (tokens_BxT == s)
    return m


def mask_tokens(
    key,
    tokens_BxT,
    *,
    special_ids: tuple[int, ...],
    mask_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
    lang_B=None,
    random_ids_LxM=None,
    random_counts_L=None,
) -> Masked:
    """With `random_ids_LxM` (row l: the ids language l uses, first `random_counts_L[l]` valid) and each
    row's language `lang_B`, random replacements are drawn from the row's own language only (Conneau,
    Wu et al.: random-word replacement within one language)."""
    B, T = tokens_BxT.shape
    P = max_predictions(T, mask_prob)
    k_pick, k_kind, k_rand = jax.random.split(key, 3)
    maskable = ~special_mask(tokens_BxT, special_ids)
    n_maskable = maskable.sum(-1)
    n_pick = jnp.minimum(jnp.round(n_maskable * mask_prob).astype(jnp.int32), P)
    n_pick = jnp.where(n_maskable > 0, jnp.maximum(n_pick, 1), 0)
    # Random scores; non-maskable tokens sort last. Top-P positions, of which the first n_pick are real.
    scores = jnp.where(maskable, jax.random.uniform(k_pick, (B, T)), -1.0)
    _, positions_BxP = jax.lax.top_k(scores, P)
    weights_BxP = (jnp.arange(P)[None, :] < n_pick[:, None]).astype(jnp.float32)
    targets_BxP = jnp.take_along_axis(tokens_BxT, positions_BxP, axis=1)
    u = jax.random.uniform(k_kind, (B, P))
    # Random replacements avoid special tokens: draw from the non-special ids.
    specials = jnp.array(sorted(special_ids), jnp.int32)
    r = jax.random.randint(k_rand, (B, P), 0, vocab_size - len(special_ids))
    r = r + jnp.searchsorted(specials - jnp.arange(len(special_ids)), r, side="right").astype(jnp.int32)
    if random_ids_LxM is not None:
        n_B = jnp.asarray(random_counts_L)[lang_B]
        j = jax.random.randint(k_rand, (B, P), 0, jnp.maximum(n_B, 1)[:, None])
        r = jnp.asarray(random_ids_LxM)[lang_B[:, None], j].astype(jnp.int32)
    new_BxP = jnp.where(
        u < mask_token_prob, mask_id, jnp.where(u < mask_token_prob + random_token_prob, r, targets_BxP)
    )
    new_BxP = jnp.where(weights_BxP > 0, new_BxP, targets_BxP)
    rows = jnp.arange(B)[:, None]
    inputs_BxT = tokens_BxT.at[rows, positions_BxP].set(new_BxP.astype(tokens_BxT.dtype))
    return Masked(inputs_BxT, positions_BxP, targets_BxP, weights_BxP)
