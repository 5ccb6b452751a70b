"""Masking statistics: ~15% of maskable tokens, 80/10/10, specials and padding never chosen."""

import jax
import jax.numpy as jnp
import numpy as np

from xlplastic.masking import mask_tokens as _mask_tokens, max_predictions

# jitted: one compilation per shape instead of one per eager op
mask_tokens = jax.jit(_mask_tokens, static_argnames=("special_ids", "mask_id", "vocab_size"))

SPECIALS = (0, 1, 2, 3, 4)  # <s> <pad> </s> <unk> <mask>
PAD, MASK, V = 1, 4, 1000


def _batch(seed=0, B=256, T=128):
    rng = np.random.default_rng(seed)
    tok = rng.integers(5, V, (B, T)).astype(np.int32)
    tok[:, 0] = 0
    lengths = rng.integers(T // 4, T + 1, B)
    for b, n in enumerate(lengths):
        tok[b, n - 1] = 2
        tok[b, n:] = PAD
    # a few <unk> inside the text: special, must never be chosen
    tok[:, 5] = 3
    return jnp.asarray(tok)


def test_masking_statistics():
    tok = _batch()
    m = mask_tokens(jax.random.PRNGKey(0), tok, special_ids=SPECIALS, mask_id=MASK, vocab_size=V)
    tok_np, inp = np.asarray(tok), np.asarray(m.inputs_BxT)
    pos, w, tgt = np.asarray(m.positions_BxP), np.asarray(m.weights_BxP), np.asarray(m.targets_BxP)
    maskable = ~np.isin(tok_np, SPECIALS)
    chosen = np.zeros_like(maskable)
    for b in range(tok_np.shape[0]):
        sel = pos[b][w[b] > 0]
        assert len(set(sel.tolist())) == len(sel), "a position was chosen twice"
        chosen[b, sel] = True
        # exactly round(15%) of this sequence's maskable tokens
        assert len(sel) == max(1, round(0.15 * maskable[b].sum()))
    assert not (chosen & ~maskable).any(), "a special or pad token was chosen"
    frac = chosen.sum() / maskable.sum()
    assert abs(frac - 0.15) < 0.005, frac
    # targets are the original tokens at the chosen positions
    rows = np.nonzero(w > 0)[0]
    np.testing.assert_array_equal(tgt[w > 0], tok_np[rows, pos[w > 0]])
    # 80 / 10 / 10
    new = inp[rows, pos[w > 0]]
    orig = tok_np[rows, pos[w > 0]]
    n = len(new)
    p_mask = (new == MASK).mean()
    p_same = (new == orig).mean()
    p_rand = ((new != MASK) & (new != orig)).mean()
    assert abs(p_mask - 0.8) < 0.02 and abs(p_rand - 0.1) < 0.015 and abs(p_same - 0.1) < 0.015, (p_mask, p_rand, p_same, n)
    # random replacements are never special tokens; unchosen tokens are untouched
    assert not np.isin(new[(new != MASK) & (new != orig)], SPECIALS).any()
    np.testing.assert_array_equal(inp[~chosen], tok_np[~chosen])


def test_masking_is_a_function_of_the_key():
    tok = _batch(1, B=8, T=64)
    kw = dict(special_ids=SPECIALS, mask_id=MASK, vocab_size=V)
    a = mask_tokens(jax.random.PRNGKey(3), tok, **kw)
    b = mask_tokens(jax.random.PRNGKey(3), tok, **kw)
    c = mask_tokens(jax.random.PRNGKey(4), tok, **kw)
    np.testing.assert_array_equal(a.inputs_BxT, b.inputs_BxT)
    assert (np.asarray(a.inputs_BxT) != np.asarray(c.inputs_BxT)).any()


def test_static_prediction_budget_and_all_special_rows():
    assert max_predictions(128, 0.15) == 20 and max_predictions(512, 0.15) == 77
    tok = jnp.full((2, 16), PAD, jnp.int32).at[:, 0].set(0).at[:, 1].set(2)  # nothing maskable
    m = mask_tokens(jax.random.PRNGKey(0), tok, special_ids=SPECIALS, mask_id=MASK, vocab_size=V)
    assert float(m.weights_BxP.sum()) == 0.0
    np.testing.assert_array_equal(m.inputs_BxT, tok)
