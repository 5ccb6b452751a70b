"""Centred kernel alignment on device (Kornblith et al., 2019; Nguyen, Raghu & Kornblith, 2021).

All functions accept NumPy or JAX arrays, compute in float32 under `jax.jit`, and run every matmul with
`precision=jax.lax.Precision.HIGHEST` (so GPUs do not silently drop to TF32 / bf16 passes). They follow
the published formulas of `xlplastic.analysis.numpy_reference` (the float64 ground truth):

* `linear_cka(X, Y, debiased=False)`            feature-space linear CKA of n x d1 and n x d2 arrays;
* `rbf_cka(X, Y, threshold=1.0, debiased=False)` Gram-space (n x n) RBF CKA, bandwidth
  threshold * sqrt(median squared distance);
* `cka_matrix(Xs, Ys, kernel=..., debiased=...)` all [L1, L2] layer pairs of two models in one call;
* streaming, exact:  `cka_init` / `cka_update` / `cka_result` accumulate sufficient statistics over
  batches of rows (tokens), so N can be millions with bounded memory, and the result EQUALS the
  full-data computation (biased and debiased), up to float32 rounding;
* streaming, Nguyen et al.'s minibatch estimator: `minibatch_cka_init` / `minibatch_cka_update` /
  `minibatch_cka_result` (average of per-batch unbiased HSIC values; a different, batch-size dependent
  estimator, offered for comparison with that paper; NOT equal to full-data CKA).

Streaming statistics (`CKAState`) and their memory
--------------------------------------------------
Rows are shifted by a fixed per-layer reference c (the first non-empty batch's column mean), s = x - c,
t = y - c_y, and the state accumulates, over all rows:

    count n;   Σ s, Σ t;   SᵀS per X layer;   TᵀT per Y layer;   SᵢᵀTⱼ for every pair (i, j);
    and for the debiased estimator, with a = ‖s‖², b = ‖t‖² per row:
    Σ a², Σ a s  per X layer;   Σ b², Σ b t  per Y layer;   Σ aᵢ bⱼ, Σ aᵢ tⱼ, Σ bⱼ sᵢ  per pair.

At the end the exact centred quantities follow algebraically with the mean offset p = Σ s / n:
X̃ᵀỸ = SᵀT - n p qᵀ, and Σ_rows ‖x̃‖²‖ỹ‖² from the fourth-moment terms above (see `_moment_terms`).
Memory: (L1·L2·d1·d2 + L1·d1² + L2·d2²) floats for the second moments, plus the small
L1·L2·(d1 + d2 + 1) + 3·(L1·d1 + L2·d2) + L1 + L2 floats for the debiased, mean and shift terms (float32:
4 bytes each). E.g. 13 x 13 layers of width 768: ~0.42 GB. `cka_state_bytes` computes it.

Numerics: transformer hidden states have large-mean outlier dimensions; accumulating raw moments
Σ x xᵀ and subtracting n μμᵀ at the end would cancel catastrophically in float32. Shifting by a fixed
reference taken from the data makes the remaining mean offset p small (O(σ/√b) for stationary data),
so the final correction n p qᵀ is tiny relative to the accumulated moments and nothing cancels; the
per-batch sums are matmul reductions and the across-batch accumulation is an elementwise add of
O(σ²)-scaled terms (relative error ~ eps · number of batches at worst).

Sharding: `cka_update` is a plain jitted reduction over the row axis, so batches sharded over rows
(e.g. `NamedSharding(mesh, P(None, "data", None))`) give the same statistics: XLA inserts the
cross-device sum.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST

ArrayLike = Union[jax.Array, np.ndarray]
Layers = Union[ArrayLike, Sequence[ArrayLike]]

__all__ = [
    "CKAState",
    "MinibatchCKAState",
    "cka_init",
    "cka_matrix",
    "cka_result",
    "cka_state_bytes",
    "cka_update",
    "linear_cka",
    "minibatch_cka_init",
    "minibatch_cka_result",
    "minibatch_cka_update",
    "rbf_cka",
]


# ----------------------------------------------------------------------------------------------- helpers


def _f32(x) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float32)


def _stack(xs: Layers) -> jax.Array:
    """[L, n, d] float32 from an array or a list of L (n, d) arrays."""
    if isinstance(xs, (list, tuple)):
        return jnp.stack([_f32(x) for x in xs])
    xs = _f32(xs)
    if xs.ndim != 3:
        raise ValueError(f"expected [layers, rows, features], got shape {xs.shape}")
    return xs


def _centre(x: jax.Array, axis: int) -> jax.Array:
    """Column-centres along `axis`; a second pass removes the rounding left by a large mean."""
    x = x - jnp.mean(x, axis=axis, keepdims=True)
    return x - jnp.mean(x, axis=axis, keepdims=True)


def _hsic_u(xty, ssr_dot, sqn_x, sqn_y, n):
    """Unbiased linear HSIC, scaled by n(n-3) (Song et al., 2012), in feature-space terms.

    xty = ‖X̃ᵀỸ‖²_F, ssr_dot = Σ_rows ‖x̃‖²‖ỹ‖², sqn = ‖X̃‖²_F, on column-centred X̃, Ỹ; the same
    expression as the reference's `_debiased_dot_product_similarity_helper`.
    """
    return xty - n / (n - 2.0) * ssr_dot + sqn_x * sqn_y / ((n - 1.0) * (n - 2.0))


class _Terms(NamedTuple):
    """Centred feature-space quantities, all layer pairs: everything both CKA estimators need."""

    n: jax.Array  # rows (float)
    xty: jax.Array  # [L1, L2]  ‖X̃ᵢᵀỸⱼ‖²_F
    xtx: jax.Array  # [L1]      ‖X̃ᵢᵀX̃ᵢ‖²_F
    yty: jax.Array  # [L2]
    sqn_x: jax.Array  # [L1]    ‖X̃ᵢ‖²_F
    sqn_y: jax.Array  # [L2]
    ssr_xy: jax.Array | None  # [L1, L2] Σ_rows ‖x̃ᵢ‖²‖ỹⱼ‖²   (debiased only)
    ssr_xx: jax.Array | None  # [L1]     Σ_rows ‖x̃ᵢ‖⁴
    ssr_yy: jax.Array | None  # [L2]


def _hsics(t: _Terms, debiased: bool):
    """(HSIC_xy [L1, L2], HSIC_xx [L1], HSIC_yy [L2]), scaled consistently (biased: raw Frobenius terms)."""
    if not debiased:
        return t.xty, t.xtx, t.yty
    hxy = _hsic_u(t.xty, t.ssr_xy, t.sqn_x[:, None], t.sqn_y[None, :], t.n)
    hxx = _hsic_u(t.xtx, t.ssr_xx, t.sqn_x, t.sqn_x, t.n)
    hyy = _hsic_u(t.yty, t.ssr_yy, t.sqn_y, t.sqn_y, t.n)
    return hxy, hxx, hyy


def _ratio(hxy, hxx, hyy):
    return hxy / (jnp.sqrt(hxx)[:, None] * jnp.sqrt(hyy)[None, :])


def _direct_terms(xc: jax.Array, yc: jax.Array, n, debiased: bool) -> _Terms:
    """Terms from column-centred [L1, n, d1] / [L2, n, d2] data (rows to ignore must be zero).

    The cross products are ONE dot_general contracting the row axis of the stacked layers:
    [L1·d1, n] x [n, L2·d2] -> [L1, d1, L2, d2], not L1·L2 small matmuls.
    """
    cross = jnp.einsum("lnd,mne->ldme", xc, yc, precision=HIGHEST)
    xty = jnp.sum(cross * cross, axis=(1, 3))
    gx = jnp.einsum("lnd,lne->lde", xc, xc, precision=HIGHEST)
    gy = jnp.einsum("lnd,lne->lde", yc, yc, precision=HIGHEST)
    xtx = jnp.sum(gx * gx, axis=(1, 2))
    yty = jnp.sum(gy * gy, axis=(1, 2))
    rx = jnp.sum(xc * xc, axis=-1)  # [L1, n] squared row norms
    ry = jnp.sum(yc * yc, axis=-1)
    sqn_x, sqn_y = jnp.sum(rx, axis=-1), jnp.sum(ry, axis=-1)
    if not debiased:
        return _Terms(n, xty, xtx, yty, sqn_x, sqn_y, None, None, None)
    ssr_xy = jnp.matmul(rx, ry.T, precision=HIGHEST)
    return _Terms(n, xty, xtx, yty, sqn_x, sqn_y, ssr_xy, jnp.sum(rx * rx, -1), jnp.sum(ry * ry, -1))


# ------------------------------------------------------------------------------------- one-shot kernels


@functools.partial(jax.jit, static_argnames=("debiased",))
def linear_cka(X: ArrayLike, Y: ArrayLike, debiased: bool = False) -> jax.Array:
    """Linear CKA of X (n x d1) and Y (n x d2), feature space: ‖ỸᵀX̃‖²_F / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F).

    `debiased=True` replaces each HSIC by the unbiased estimator (Song et al., 2012) exactly as the
    reference `feature_space_linear_cka(..., debiased=True)`. Returns a 0-d float32 array.
    """
    x, y = _centre(_f32(X), 0)[None], _centre(_f32(Y), 0)[None]
    terms = _direct_terms(x, y, jnp.float32(x.shape[1]), debiased)
    return _ratio(*_hsics(terms, debiased))[0, 0]


def _gram_rbf(x: jax.Array, threshold) -> jax.Array:
    """RBF Gram matrix of one n x d layer (sigma² = threshold² · median squared distance, diagonal included)."""
    x = _centre(x, 0)  # distances are translation invariant; centring only reduces float32 cancellation
    g = jnp.matmul(x, x.T, precision=HIGHEST)
    sq = jnp.diagonal(g)
    d2 = -2.0 * g + sq[:, None] + sq[None, :]
    med = jnp.median(d2)
    return jnp.exp(-d2 / (2.0 * threshold**2 * med))


def _center_gram(g: jax.Array, unbiased: bool) -> jax.Array:
    n = g.shape[0]
    if unbiased:
        eye = jnp.eye(n, dtype=bool)
        g = jnp.where(eye, 0.0, g)
        means = jnp.sum(g, 0) / (n - 2)
        means = means - jnp.sum(means) / (2 * (n - 1))
        g = g - means[:, None] - means[None, :]
        return jnp.where(eye, 0.0, g)
    means = jnp.mean(g, 0)
    means = means - jnp.mean(means) / 2
    return g - means[:, None] - means[None, :]


def _rbf_matrix(xs: jax.Array, ys: jax.Array, threshold, debiased: bool) -> jax.Array:
    def centred(layers):
        return jax.vmap(lambda x: _center_gram(_gram_rbf(x, threshold), debiased))(layers)

    kx, ky = centred(xs), centred(ys)  # [L1, n, n], [L2, n, n]
    hxy = jnp.einsum("lij,mij->lm", kx, ky, precision=HIGHEST)
    hxx = jnp.sum(kx * kx, axis=(1, 2))
    hyy = jnp.sum(ky * ky, axis=(1, 2))
    return _ratio(hxy, hxx, hyy)


@functools.partial(jax.jit, static_argnames=("debiased",))
def rbf_cka(X: ArrayLike, Y: ArrayLike, threshold: float = 1.0, debiased: bool = False) -> jax.Array:
    """RBF-kernel CKA (Gram space, O(n²) memory: for moderate n). Returns a 0-d float32 array."""
    return _rbf_matrix(_f32(X)[None], _f32(Y)[None], threshold, debiased)[0, 0]


@functools.partial(jax.jit, static_argnames=("kernel", "debiased"))
def cka_matrix(
    Xs: Layers, Ys: Layers, *, kernel: str = "linear", debiased: bool = False, threshold: float = 1.0
) -> jax.Array:
    """CKA of every layer pair of two models in one jitted call: [L1, L2], entry (i, j) = CKA(Xs[i], Ys[j]).

    Xs: [L1, n, d1] (or a list of L1 n x d1 arrays); Ys: [L2, n, d2]. kernel: "linear" or "rbf".

    Linear (feature space): each layer is centred once, its self term X̃ᵢᵀX̃ᵢ computed once, and all
    cross terms come from one stacked product [L1·d1, n] x [n, L2·d2]. FLOPs ≈
    2n·(L1·d1·L2·d2 + L1·d1² + L2·d2²) for the matmuls, + O(n·(L1·d1 + L2·d2)) for centring and, when
    debiased, + 2n·L1·L2 for the row-norm products. Memory: the [L1, d1, L2, d2] cross block.
    RBF (Gram space): one centred n x n Gram per layer (L1 + L2 of them, 2n²·d FLOPs each + a median),
    then all pairs as one [L1, n²] x [n², L2] product: 2n²·L1·L2 FLOPs; memory (L1 + L2)·n² floats.
    """
    xs, ys = _stack(Xs), _stack(Ys)
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(f"row counts differ: {xs.shape[1]} vs {ys.shape[1]}")
    if kernel == "linear":
        terms = _direct_terms(_centre(xs, 1), _centre(ys, 1), jnp.float32(xs.shape[1]), debiased)
        return _ratio(*_hsics(terms, debiased))
    if kernel == "rbf":
        return _rbf_matrix(xs, ys, threshold, debiased)
    raise ValueError(f"unknown kernel {kernel!r}; expected 'linear' or 'rbf'")


# ------------------------------------------------------------------------------- streaming, exact (linear)


class CKAState(NamedTuple):
    """Sufficient statistics of linear CKA (biased and debiased) over all layer pairs, rows shifted by `shift`.

    s = x - shift_x (per X layer), t = y - shift_y, a = ‖s‖², b = ‖t‖² per row; sums over all rows seen.
    """

    count: jax.Array  # int32 []          rows seen
    shift_x: jax.Array  # [L1, d1]        fixed reference (first non-empty batch's mean)
    shift_y: jax.Array  # [L2, d2]
    sum_x: jax.Array  # [L1, d1]          Σ s
    sum_y: jax.Array  # [L2, d2]          Σ t
    xx: jax.Array  # [L1, d1, d1]         Σ s sᵀ
    yy: jax.Array  # [L2, d2, d2]         Σ t tᵀ
    xy: jax.Array  # [L1, d1, L2, d2]     Σ sᵢ tⱼᵀ
    aa: jax.Array  # [L1]                 Σ a²
    bb: jax.Array  # [L2]                 Σ b²
    as_: jax.Array  # [L1, d1]            Σ a s
    bt: jax.Array  # [L2, d2]             Σ b t
    ab: jax.Array  # [L1, L2]             Σ aᵢ bⱼ
    at: jax.Array  # [L1, L2, d2]         Σ aᵢ tⱼ
    bs: jax.Array  # [L1, L2, d1]         Σ bⱼ sᵢ


def cka_state_bytes(num_layers_x: int, dim_x: int, num_layers_y: int, dim_y: int) -> int:
    """Bytes of a `CKAState` (float32): (L1·L2·d1·d2 + L1·d1² + L2·d2² + small terms) · 4."""
    l1, d1, l2, d2 = num_layers_x, dim_x, num_layers_y, dim_y
    floats = l1 * l2 * d1 * d2 + l1 * d1 * d1 + l2 * d2 * d2
    floats += l1 * l2 * (d1 + d2 + 1) + 3 * (l1 * d1 + l2 * d2) + l1 + l2
    return 4 * floats + 4


def cka_init(num_layers_x: int, dim_x: int, num_layers_y: int, dim_y: int, *, sharding=None) -> CKAState:
    """Empty statistics for [L1, ·, d1] x [L2, ·, d2] batches; `sharding` (e.g. replicated
    `NamedSharding(mesh, P())`) places the state on a mesh up front."""
    l1, d1, l2, d2 = num_layers_x, dim_x, num_layers_y, dim_y
    z = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
    state = CKAState(
        count=jnp.zeros((), jnp.int32),
        shift_x=z(l1, d1),
        shift_y=z(l2, d2),
        sum_x=z(l1, d1),
        sum_y=z(l2, d2),
        xx=z(l1, d1, d1),
        yy=z(l2, d2, d2),
        xy=z(l1, d1, l2, d2),
        aa=z(l1),
        bb=z(l2),
        as_=z(l1, d1),
        bt=z(l2, d2),
        ab=z(l1, l2),
        at=z(l1, l2, d2),
        bs=z(l1, l2, d1),
    )
    if sharding is not None:
        state = jax.device_put(state, sharding)
    return state


def _row_mask(valid, rows: int) -> jax.Array:
    """bool [rows] from None (all), a count (first `valid` rows) or a bool/0-1 mask."""
    if valid is None:
        return jnp.ones((rows,), bool)
    valid = jnp.asarray(valid)
    if valid.ndim == 0:
        return jnp.arange(rows) < valid
    if valid.shape != (rows,):
        raise ValueError(f"valid mask shape {valid.shape} != ({rows},)")
    return valid.astype(bool)


@functools.partial(jax.jit, donate_argnums=0)
def cka_update(state: CKAState, Xs_batch: Layers, Ys_batch: Layers, valid=None) -> CKAState:
    """Adds a batch of rows: Xs_batch [L1, b, d1], Ys_batch [L2, b, d2]. `state` is donated.

    valid: None (all b rows), a row count (rows [0, valid) are used) or a bool mask [b]. Pass a count
    or mask to pad the last batch to the common size b: the count is traced, so one compilation serves
    every batch. Rows outside `valid` may hold anything (zeros, garbage, NaN).
    Cost per batch: 2b·(L1·d1·L2·d2 + L1·d1² + L2·d2² + L1·L2·(d1 + d2 + 1)) FLOPs.
    """
    xs, ys = _stack(Xs_batch), _stack(Ys_batch)
    b = xs.shape[1]
    mask = _row_mask(valid, b)
    nb = jnp.sum(mask.astype(jnp.int32))
    first = state.count == 0

    def shifted(layers, shift):
        m3 = mask[None, :, None]
        batch_mean = jnp.sum(jnp.where(m3, layers, 0.0), axis=1) / jnp.maximum(nb, 1).astype(jnp.float32)
        shift = jnp.where(first, batch_mean, shift)
        return jnp.where(m3, layers - shift[:, None, :], 0.0), shift

    s, shift_x = shifted(xs, state.shift_x)
    t, shift_y = shifted(ys, state.shift_y)
    a = jnp.sum(s * s, axis=-1)  # [L1, b]; zero on masked rows
    bq = jnp.sum(t * t, axis=-1)  # [L2, b]
    mm = functools.partial(jnp.einsum, precision=HIGHEST)
    return CKAState(
        count=state.count + nb,
        shift_x=shift_x,
        shift_y=shift_y,
        sum_x=state.sum_x + jnp.sum(s, axis=1),
        sum_y=state.sum_y + jnp.sum(t, axis=1),
        xx=state.xx + mm("lbd,lbe->lde", s, s),
        yy=state.yy + mm("lbd,lbe->lde", t, t),
        xy=state.xy + mm("lbd,mbe->ldme", s, t),
        aa=state.aa + jnp.sum(a * a, axis=-1),
        bb=state.bb + jnp.sum(bq * bq, axis=-1),
        as_=state.as_ + mm("lb,lbd->ld", a, s),
        bt=state.bt + mm("lb,lbd->ld", bq, t),
        ab=state.ab + mm("lb,mb->lm", a, bq),
        at=state.at + mm("lb,mbe->lme", a, t),
        bs=state.bs + mm("mb,lbd->lmd", bq, s),
    )


def _moment_terms(st: CKAState) -> _Terms:
    """Exact centred terms from the shifted moments (p = mean offset of s, q of t).

    X̃ᵀỸ = SᵀT - n p qᵀ,  ‖X̃‖²_F = tr(SᵀS) - n‖p‖², and with ‖x̃‖² = a - 2 s·p + ‖p‖²:
    Σ ‖x̃‖²‖ỹ‖² = Σab - 2 q·Σat - 2 p·Σbs + 4 pᵀ(SᵀT)q + ‖q‖²Σa + ‖p‖²Σb - 3n‖p‖²‖q‖²
    Σ ‖x̃‖⁴     = Σa² - 4 p·Σas + 4 pᵀ(SᵀS)p + 2‖p‖²Σa - 3n‖p‖⁴
    """
    n = st.count.astype(jnp.float32)
    p = st.sum_x / n  # [L1, d1]
    q = st.sum_y / n  # [L2, d2]
    mm = functools.partial(jnp.einsum, precision=HIGHEST)
    cxy = st.xy - n * p[:, :, None, None] * q[None, None, :, :]
    cxx = st.xx - n * p[:, :, None] * p[:, None, :]
    cyy = st.yy - n * q[:, :, None] * q[:, None, :]
    xty = jnp.sum(cxy * cxy, axis=(1, 3))
    xtx = jnp.sum(cxx * cxx, axis=(1, 2))
    yty = jnp.sum(cyy * cyy, axis=(1, 2))
    sum_a = jnp.trace(st.xx, axis1=1, axis2=2)  # Σ a  (shifted)
    sum_b = jnp.trace(st.yy, axis1=1, axis2=2)
    pp = jnp.sum(p * p, -1)
    qq = jnp.sum(q * q, -1)
    sqn_x = sum_a - n * pp
    sqn_y = sum_b - n * qq
    ssr_xy = (
        st.ab
        - 2.0 * mm("lme,me->lm", st.at, q)
        - 2.0 * mm("lmd,ld->lm", st.bs, p)
        + 4.0 * mm("ld,ldme,me->lm", p, st.xy, q)
        + qq[None, :] * sum_a[:, None]
        + pp[:, None] * sum_b[None, :]
        - 3.0 * n * pp[:, None] * qq[None, :]
    )

    def ssr_self(aa, as_, gram, m, mm_sq, sum_sq):
        quad = mm("ld,lde,le->l", m, gram, m)
        return aa - 4.0 * jnp.sum(m * as_, -1) + 4.0 * quad + 2.0 * mm_sq * sum_sq - 3.0 * n * mm_sq * mm_sq

    ssr_xx = ssr_self(st.aa, st.as_, st.xx, p, pp, sum_a)
    ssr_yy = ssr_self(st.bb, st.bt, st.yy, q, qq, sum_b)
    return _Terms(n, xty, xtx, yty, sqn_x, sqn_y, ssr_xy, ssr_xx, ssr_yy)


@functools.partial(jax.jit, static_argnames=("debiased",))
def cka_result(state: CKAState, debiased: bool = False) -> jax.Array:
    """[L1, L2] linear CKA of all rows fed so far; equals `cka_matrix` on the concatenated rows."""
    return _ratio(*_hsics(_moment_terms(state), debiased))


# ---------------------------------------------------------------- streaming, Nguyen et al. minibatch CKA


class MinibatchCKAState(NamedTuple):
    """Running sums of per-batch unbiased HSIC_1 values (Nguyen, Raghu & Kornblith, 2021)."""

    batches: jax.Array  # int32 []
    hxy: jax.Array  # [L1, L2]
    hxx: jax.Array  # [L1]
    hyy: jax.Array  # [L2]


def minibatch_cka_init(num_layers_x: int, num_layers_y: int) -> MinibatchCKAState:
    return MinibatchCKAState(
        jnp.zeros((), jnp.int32),
        jnp.zeros((num_layers_x, num_layers_y), jnp.float32),
        jnp.zeros((num_layers_x,), jnp.float32),
        jnp.zeros((num_layers_y,), jnp.float32),
    )


@functools.partial(jax.jit, donate_argnums=0)
def minibatch_cka_update(state: MinibatchCKAState, Xs_batch: Layers, Ys_batch: Layers, valid=None) -> MinibatchCKAState:
    """Adds one minibatch's unbiased HSIC_1 = hsic_u / (n(n-3)) for every pair (the batch needs > 3 valid rows).

    This is the minibatch ESTIMATOR (mean of per-batch HSICs; depends on the batch size); for the exact
    full-data value use `cka_update` / `cka_result`.
    """
    xs, ys = _stack(Xs_batch), _stack(Ys_batch)
    mask = _row_mask(valid, xs.shape[1])
    n = jnp.sum(mask.astype(jnp.float32))
    m3 = mask[None, :, None]

    def centred(layers):
        mean = jnp.sum(jnp.where(m3, layers, 0.0), axis=1, keepdims=True) / n
        return jnp.where(m3, layers - mean, 0.0)

    hxy, hxx, hyy = _hsics(_direct_terms(centred(xs), centred(ys), n, True), True)
    scale = 1.0 / (n * (n - 3.0))
    return MinibatchCKAState(
        state.batches + 1, state.hxy + scale * hxy, state.hxx + scale * hxx, state.hyy + scale * hyy
    )


@jax.jit
def minibatch_cka_result(state: MinibatchCKAState) -> jax.Array:
    """[L1, L2] minibatch CKA: mean HSIC_xy / sqrt(mean HSIC_xx · mean HSIC_yy)."""
    k = state.batches.astype(jnp.float32)
    return _ratio(state.hxy / k, state.hxx / k, state.hyy / k)
