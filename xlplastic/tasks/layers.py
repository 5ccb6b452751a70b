"""Building blocks of the task heads in tasks/kinds/: a float32 dense layer, gathers, masked losses.

Why: heads are small next to the encoder, so they compute in float32 whatever the encoder's dtype, and
initialise their parameters (with logical axes) exactly as the encoder does; this is where that lives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from xlplastic.config import ModelConfig
from xlplastic.model import param  # noqa: F401 - heads draw their parameters as the encoder does

NEG = -1e9  # logit of an impossible choice (finite: no NaN in log_softmax)
f32 = jnp.float32


def param_dtype(cfg: ModelConfig):
    """The dtype parameters are stored in (config model.param_dtype: float32 or bfloat16)."""
    return jnp.dtype(cfg.param_dtype)


def split_keys(key, n):
    """n dropout keys, or n Nones when there is no dropout (evaluation)."""
    return tuple(jax.random.split(key, n)) if key is not None else (None,) * n


def gather(h_BxTxD, idx_BxK):
    """States at positions idx [B, K] -> [B, K, D]."""
    return jnp.take_along_axis(h_BxTxD, idx_BxK[..., None], axis=1)


def nll(logits, target):
    """-log p(target) per item; negative targets are clipped here and must be masked by the caller."""
    lp = jax.nn.log_softmax(logits.astype(f32), axis=-1)
    return -jnp.take_along_axis(lp, jnp.clip(target, 0, logits.shape[-1] - 1)[..., None], axis=-1)[..., 0]


def masked_sums(nll_items, ok, right):
    """(loss sum, item count, correct count) over the items where `ok` (a 0/1 mask) is set."""
    ok = ok.astype(f32)
    return (nll_items * ok).sum(), ok.sum(), (right * ok).sum()


class Dense(nnx.Module):
    """x @ kernel + bias with logical axes (in_axis, out_axis); computes in float32."""

    def __init__(self, rngs, d_in, d_out, axes, std, pd, zero=False):
        self.kernel = param(rngs, (d_in, d_out), axes, None if zero else std, pd)
        self.bias = param(rngs, (d_out,), axes[1:], None, pd)

    def __call__(self, x):
        return x.astype(f32) @ self.kernel[...].astype(f32) + self.bias[...].astype(f32)
