"""Masked-LM encoder (BERT / RoBERTa / XLM-R conventions) in Flax NNX.

Every parameter carries `axes=` logical axis names; `sharding.py` maps them to the mesh. Parameters are
stored in `param_dtype` and cast to the compute `dtype` at use; layer norms, softmax and the loss run in
float32. Shapes in names follow nanodo: B batch, T length, D model width, N heads, H head width, F FFN
width, V vocabulary, P predicted (masked) positions.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend.random import threefry2x32_p

from xlplastic.config import ModelConfig
from xlplastic.layout import STACK
from xlplastic.sharding import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# model.remat: what a block keeps for the backward pass. `block`: only its input (everything recomputed);
# `dots`: also the outputs of its weight matmuls (projections and FFN), recomputing attention scores,
# softmax, GELU, norms and dropout masks, the cheap-to-recompute, expensive-to-store part
REMAT_POLICIES = {"block": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def param(rngs: nnx.Rngs, shape, axes, std: float | None, dtype) -> nnx.Param:
    """A parameter with logical axes; std None = zeros, 'one' = ones."""
    if std is None:
        value = jnp.zeros(shape, dtype)
    elif std == "one":
        value = jnp.ones(shape, dtype)
    else:
        value = (std * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape)).astype(dtype)
    return nnx.Param(value, axes=tuple(axes))


class LayerNorm(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        pd = DTYPES[cfg.param_dtype]
        self.eps = cfg.layer_norm_eps
        self.scale = param(rngs, (cfg.hidden_size,), ("embed",), "one", pd)
        self.bias = param(rngs, (cfg.hidden_size,), ("embed",), None, pd)

    def __call__(self, x):
        dtype = x.dtype
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(dtype)


def uniform16(key, shape) -> jax.Array:
    """uint16 uniform draws, four per Threefry-2x32 evaluation (`jax.random` spends one evaluation, 64
    bits, on every element). Counters are the element's flat index (as jax's partitionable Threefry),
    so the draws do not depend on how the array is sharded."""
    *lead, last = shape
    n = -(-last // 4)
    counter_shape = (*lead, n)
    idx = jnp.zeros(counter_shape, jnp.uint32)
    stride = 1
    for d in reversed(range(len(counter_shape))):
        idx = idx + jax.lax.broadcasted_iota(jnp.uint32, counter_shape, d) * jnp.uint32(stride)
        stride *= counter_shape[d]
    k = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    hi, lo = threefry2x32_p.bind(k[0], k[1], jnp.zeros_like(idx), idx)
    words = jnp.stack([hi, lo], -1)  # [..., n, 2] uint32
    halves = jnp.stack([words >> 16, words & 0xFFFF], -1).astype(jnp.uint16)  # [..., n, 2, 2]
    return halves.reshape(*lead, 4 * n)[..., :last]


def dropout(x, rate: float, key):
    """Inverted dropout; `key=None` means deterministic (evaluation). The drop probability is rate
    rounded to 1/65536 (16-bit draws) and the kept values are scaled by the exact inverse keep rate."""
    if key is None or rate <= 0.0:
        return x
    cut = min(round(rate * 65536), 65535)
    keep = uniform16(key, x.shape) >= cut
    return jnp.where(keep, x * (65536.0 / (65536 - cut)), 0).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        pd, std = DTYPES[cfg.param_dtype], cfg.init_std
        D, N = cfg.hidden_size, cfg.num_heads
        H = D // N
        self.cfg = cfg
        self.qkv_kernel = param(rngs, (3, D, N, H), ("qkv", "embed", "heads", "kv"), std, pd)
        self.qkv_bias = param(rngs, (3, N, H), ("qkv", "heads", "kv"), None, pd)
        self.out_kernel = param(rngs, (N, H, D), ("heads", "kv", "embed"), std, pd)
        self.out_bias = param(rngs, (D,), ("embed",), None, pd)
        if cfg.relative_attention:  # T5-style learned bias per head and clipped offset j - i
            R = cfg.relative_attention
            self.relative_bias = param(rngs, (N, 2 * R + 1), ("heads", "relative"), None, pd)

    def _bias(self, T: int):
        """[1, N, T, T] attention-score bias from the relative offsets, or None."""
        if not self.cfg.relative_attention:
            return None
        R = self.cfg.relative_attention
        off = jnp.clip(jnp.arange(T)[None, :] - jnp.arange(T)[:, None], -R, R) + R  # [T, T]
        return jnp.take(self.relative_bias[...].astype(jnp.float32), off, axis=1)[None]

    def __call__(self, x_BxTxD, lengths_B, key):
        cfg, dt = self.cfg, x_BxTxD.dtype
        qkv = jnp.einsum("btd,sdnh->sbtnh", x_BxTxD, self.qkv_kernel[...].astype(dt))
        qkv = qkv + self.qkv_bias[...].astype(dt)[:, None, None]
        q_BxTxNxH, k_BxTxNxH, v_BxTxNxH = qkv[0], qkv[1], qkv[2]
        q_BxTxNxH = constrain(q_BxTxNxH, ("batch", "length", "heads", "kv"))
        if key is not None and cfg.attention_dropout > 0:
            # jax.nn.dot_product_attention has no dropout: take the explicit path while training with it.
            scale = q_BxTxNxH.shape[-1] ** -0.5
            s = jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH, k_BxTxNxH, preferred_element_type=jnp.float32) * scale
            if (bias := self._bias(x_BxTxD.shape[1])) is not None:
                s = s + bias
            valid = jnp.arange(x_BxTxD.shape[1])[None, :] < lengths_B[:, None]
            s = jnp.where(valid[:, None, None, :], s, jnp.finfo(jnp.float32).min)
            p = dropout(jax.nn.softmax(s, axis=-1), cfg.attention_dropout, key).astype(dt)
            o_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", p, v_BxTxNxH)
        else:
            bias = self._bias(x_BxTxD.shape[1])
            o_BxTxNxH = jax.nn.dot_product_attention(
                q_BxTxNxH,
                k_BxTxNxH,
                v_BxTxNxH,
                bias=None if bias is None else bias.astype(q_BxTxNxH.dtype),
                key_value_seq_lengths=lengths_B,
                implementation=cfg.attention_impl,
            )
        out = jnp.einsum("btnh,nhd->btd", o_BxTxNxH, self.out_kernel[...].astype(dt))
        return out + self.out_bias[...].astype(dt)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        pd, std = DTYPES[cfg.param_dtype], cfg.init_std
        D, F = cfg.hidden_size, cfg.mlp_dim
        self.in_kernel = param(rngs, (D, F), ("embed", "mlp"), std, pd)
        self.in_bias = param(rngs, (F,), ("mlp",), None, pd)
        self.out_kernel = param(rngs, (F, D), ("mlp", "embed"), std, pd)
        self.out_bias = param(rngs, (D,), ("embed",), None, pd)

    def __call__(self, x_BxTxD):
        dt = x_BxTxD.dtype
        h_BxTxF = x_BxTxD @ self.in_kernel[...].astype(dt) + self.in_bias[...].astype(dt)
        h_BxTxF = constrain(jax.nn.gelu(h_BxTxF, approximate=False), ("batch", "length", "mlp"))
        return h_BxTxF @ self.out_kernel[...].astype(dt) + self.out_bias[...].astype(dt)


class Block(nnx.Module):
    """One transformer layer; `norm='post'` is BERT/RoBERTa, `'pre'` normalises before each sublayer."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.attention = Attention(cfg, rngs)
        self.attention_norm = LayerNorm(cfg, rngs)
        self.mlp = MLP(cfg, rngs)
        self.mlp_norm = LayerNorm(cfg, rngs)

    def __call__(self, x_BxTxD, lengths_B, key):
        cfg = self.cfg
        k_att, k_drop1, k_drop2 = jax.random.split(key, 3) if key is not None else (None, None, None)
        if cfg.norm == "pre":
            x_BxTxD = x_BxTxD + dropout(self.attention(self.attention_norm(x_BxTxD), lengths_B, k_att), cfg.dropout, k_drop1)
            x_BxTxD = x_BxTxD + dropout(self.mlp(self.mlp_norm(x_BxTxD)), cfg.dropout, k_drop2)
        else:
            x_BxTxD = self.attention_norm(x_BxTxD + dropout(self.attention(x_BxTxD, lengths_B, k_att), cfg.dropout, k_drop1))
            x_BxTxD = self.mlp_norm(x_BxTxD + dropout(self.mlp(x_BxTxD), cfg.dropout, k_drop2))
        return constrain(x_BxTxD, ("batch", "length", "embed"))


class MLMHead(nnx.Module):
    """Dense + GELU + LayerNorm transform, then the tied vocabulary projection with its own bias."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, rngs: nnx.Rngs):
        pd, std = DTYPES[cfg.param_dtype], cfg.init_std
        D = cfg.hidden_size
        self.kernel = param(rngs, (D, D), ("embed", "hidden"), std, pd)
        self.bias = param(rngs, (D,), ("hidden",), None, pd)
        self.norm = LayerNorm(cfg, rngs)
        self.output_bias = param(rngs, (vocab_size,), ("vocab",), None, pd)


class LanguageParts(nnx.Module):
    """One language's own copies (`model.separate`): token / position embeddings and bottom layers."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, rngs: nnx.Rngs):
        pd, std, sep = DTYPES[cfg.param_dtype], cfg.init_std, cfg.separate
        if sep.embeddings:
            self.token_embed = param(rngs, (vocab_size, cfg.hidden_size), ("vocab", "embed"), std, pd)
        if sep.position_copies:
            self.position_embed = param(rngs, (cfg.max_positions, cfg.hidden_size), ("positions", "embed"), std, pd)
        for i in range(sep.layers):
            setattr(self, f"layer_{i}", Block(cfg, rngs))


class Encoder(nnx.Module):
    """Parameters shared by all languages live at the top level; with `model.separate`, each language
    `l` of `model.languages` has its own copies under `lang_<l>/` (same names), and a row's language
    (`lang_B`, an index into `model.languages`) picks which copy it goes through."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, *, rngs: nnx.Rngs):
        pd, std = DTYPES[cfg.param_dtype], cfg.init_std
        D = cfg.hidden_size
        sep = cfg.separate
        self.cfg = cfg
        self.vocab_size = vocab_size
        if not sep.embeddings:
            self.token_embed = param(rngs, (vocab_size, D), ("vocab", "embed"), std, pd)
        if not sep.position_copies:
            self.position_embed = param(rngs, (cfg.max_positions, D), ("positions", "embed"), std, pd)
        if cfg.type_vocab_size:
            self.type_embed = param(rngs, (cfg.type_vocab_size, D), ("types", "embed"), std, pd)
        if cfg.num_languages:
            self.language_embed = param(rngs, (cfg.num_languages, D), ("languages", "embed"), std, pd)
        self.embed_norm = LayerNorm(cfg, rngs)
        blocks = [Block(cfg, rngs) for _ in range(sep.layers, cfg.num_layers)]
        if cfg.scan_layers and blocks:  # the same draws as unrolled, stacked on a leading `layers` axis
            setattr(self, STACK, stack_blocks(blocks))
        else:
            for i, block in zip(range(sep.layers, cfg.num_layers), blocks):
                setattr(self, f"layer_{i}", block)
        if cfg.norm == "pre":
            self.final_norm = LayerNorm(cfg, rngs)
        self.mlm_head = MLMHead(cfg, vocab_size, rngs)
        if sep.any:
            for lang in cfg.languages:
                setattr(self, f"lang_{lang}", LanguageParts(cfg, vocab_size, rngs))

    def _copies(self, name: str) -> list:
        """The per-language copies of parameter/module `name`, in `model.languages` order."""
        return [getattr(getattr(self, f"lang_{l}"), name) for l in self.cfg.languages]

    def token_embeddings(self, language: str | None = None):
        """The token-embedding matrix [V, D] (of `language` when embeddings are language-specific)."""
        if not self.cfg.separate.embeddings:
            return self.token_embed[...]
        langs = self.cfg.languages
        if language not in langs:
            raise ValueError(f"language {language!r}: this model has separate embeddings for {langs}; expected one of them")
        return getattr(self, f"lang_{language}").token_embed[...]

    @property
    def scanned(self) -> bool:
        """Whether the shared blocks are one stacked Block run by `lax.scan` (`model.scan_layers`)."""
        return hasattr(self, STACK)

    def shared_blocks(self) -> list[Block]:
        """The shared blocks, unrolled (all of them unless the bottom ones are language-specific)."""
        return [getattr(self, f"layer_{i}") for i in range(self.cfg.separate.layers, self.cfg.num_layers)]

    @staticmethod
    def _pick(outs: list, lang_B):
        """Row b of the result is row b of outs[lang_B[b]] (each copy ran on the whole batch)."""
        y = outs[0]
        for j, o in enumerate(outs[1:], 1):
            y = jnp.where((lang_B == j).reshape((-1,) + (1,) * (o.ndim - 1)), o, y)
        return y

    def _block(self, block, x, lengths_B, key):
        if self.cfg.remat != "none":
            return nnx.remat(lambda b, x, l, k: b(x, l, k), policy=REMAT_POLICIES[self.cfg.remat])(block, x, lengths_B, key)
        return block(x, lengths_B, key)

    def _scan(self, x_BxTxD, lengths_B, keys):
        """The stacked shared blocks as one `lax.scan` (compiled once, whatever the depth): (output, every
        layer's output [L, B, T, D]). `keys` [L] are the dropout keys the unrolled layers would get, so
        both layouts compute the same function; remat (`model.remat: block`) applies inside the body."""
        graphdef, state = nnx.split(getattr(self, STACK))

        def body(x, xs):
            layer_state, key = xs
            y = nnx.merge(graphdef, layer_state)(x, lengths_B, key)
            return y, y

        if self.cfg.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
        if keys is None:
            return jax.lax.scan(lambda x, s: body(x, (s, None)), x_BxTxD, state)
        return jax.lax.scan(body, x_BxTxD, (state, keys))

    def encode(
        self,
        tokens_BxT,
        lengths_B,
        *,
        types_BxT=None,
        lang_B=None,
        dropout_key=None,
        return_hidden: bool = False,
    ):
        """Hidden states [B, T, D] (and, with return_hidden, every layer's output; layer 0 = embeddings)."""
        cfg = self.cfg
        dt = DTYPES[cfg.dtype]
        T = tokens_BxT.shape[1]
        if T + cfg.position_offset > cfg.max_positions:
            raise ValueError(f"sequence length {T} exceeds model.max_positions {cfg.max_positions}"
                             + (f" less model.position_offset {cfg.position_offset}" if cfg.position_offset else ""))
        sep = cfg.separate
        if sep.any and lang_B is None:
            raise ValueError("this model has language-specific parameters (model.separate); expected lang_B")
        if sep.embeddings:  # one gather from the stacked copies: row b reads language lang_B[b]'s matrix
            E_LxVxD = jnp.stack(self._copies("token_embed"))
            x = E_LxVxD[lang_B[:, None], tokens_BxT].astype(jnp.float32)
        else:
            x = jnp.take(self.token_embed[...], tokens_BxT, axis=0).astype(jnp.float32)
        if sep.position_copies:
            P_LxTxD = jnp.stack([p[:T] for p in self._copies("position_embed")])
            x = x + jnp.take(P_LxTxD, lang_B, axis=0).astype(jnp.float32)
        elif cfg.position_offset:  # RoBERTa/XLM-R rows: token i reads offset + i, padding reads offset - 1
            pos_BxT = jnp.where(jnp.arange(T)[None, :] < lengths_B[:, None], cfg.position_offset + jnp.arange(T)[None, :],
                                cfg.position_offset - 1)
            x = x + jnp.take(self.position_embed[...], pos_BxT, axis=0).astype(jnp.float32)
        else:
            x = x + self.position_embed[...][:T].astype(jnp.float32)[None]
        if cfg.type_vocab_size:
            types_BxT = jnp.zeros_like(tokens_BxT) if types_BxT is None else types_BxT
            x = x + jnp.take(self.type_embed[...], types_BxT, axis=0).astype(jnp.float32)
        if cfg.num_languages and lang_B is not None:
            x = x + jnp.take(self.language_embed[...], lang_B, axis=0).astype(jnp.float32)[:, None]
        keys = (None,) * (cfg.num_layers + 1) if dropout_key is None else jax.random.split(dropout_key, cfg.num_layers + 1)
        x_BxTxD = dropout(self.embed_norm(x).astype(dt), cfg.dropout, keys[0])
        x_BxTxD = constrain(x_BxTxD, ("batch", "length", "embed"))
        hidden = [x_BxTxD]
        for i in range(sep.layers):  # language-specific bottom layers: every copy runs, each row keeps its own
            outs = [self._block(b, x_BxTxD, lengths_B, keys[1 + i]) for b in self._copies(f"layer_{i}")]
            x_BxTxD = self._pick(outs, lang_B)
            hidden.append(x_BxTxD)
        if self.scanned:
            x_BxTxD, ys_LxBxTxD = self._scan(x_BxTxD, lengths_B, None if dropout_key is None else keys[1 + sep.layers:])
            if return_hidden:
                hidden += list(ys_LxBxTxD)
        else:
            for block, key in zip(self.shared_blocks(), keys[1 + sep.layers:]):
                x_BxTxD = self._block(block, x_BxTxD, lengths_B, key)
                hidden.append(x_BxTxD)
        if cfg.norm == "pre":
            x_BxTxD = self.final_norm(x_BxTxD)
            hidden[-1] = x_BxTxD
        return (x_BxTxD, hidden) if return_hidden else x_BxTxD

    def mlm_logits(self, h_BxPxD, lang_B=None):
        """Vocabulary logits (float32) for the given positions only: the projection is tied to the token
        embeddings (with separate embeddings, each row's own language's matrix: a separate softmax)."""
        head = self.mlm_head
        dt = h_BxPxD.dtype
        h = h_BxPxD @ head.kernel[...].astype(dt) + head.bias[...].astype(dt)
        h = head.norm(jax.nn.gelu(h, approximate=False))

        def project(E_VxD):
            return jnp.einsum("bpd,vd->bpv", h, E_VxD.astype(dt), preferred_element_type=jnp.float32)

        if self.cfg.separate.embeddings:
            if lang_B is None:
                raise ValueError("this model has language-specific embeddings; expected lang_B")
            logits_BxPxV = self._pick([project(E) for E in self._copies("token_embed")], lang_B)
        else:
            logits_BxPxV = project(self.token_embed[...])
        return logits_BxPxV + head.output_bias[...].astype(jnp.float32)


def stack_blocks(blocks: list[Block]) -> Block:
    """One Block whose parameters are the given blocks' stacked on a new leading axis (logical axis
    `layers`, never sharded: each device holds every layer's slice of its own shard)."""
    graphdef, _ = nnx.split(blocks[0])
    state = jax.tree.map(lambda *vs: jnp.stack(vs), *(nnx.split(b)[1] for b in blocks))
    for _, var in nnx.to_flat_state(state):
        var.set_metadata(axes=(STACK, *var.get_metadata()["axes"]))
    return nnx.merge(graphdef, state)


def create(cfg: ModelConfig, vocab_size: int, seed: int) -> Encoder:
    return Encoder(cfg, vocab_size, rngs=nnx.Rngs(params=seed))


def split(model: Encoder) -> tuple[Any, dict]:
    """(graphdef, pure dict of parameters): the dict is what the train state, optax and Orbax see."""
    graphdef, state = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def merge(graphdef, abstract_state, params: dict) -> Encoder:
    state = jax.tree.map(lambda x: x, abstract_state)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def logical_axes(model: Encoder) -> dict:
    """Pure dict (same structure as the parameters) of each leaf's logical axis names."""
    _, state = nnx.split(model, nnx.Param)
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        node = out
        for p in path[:-1]:
            node = node.setdefault(str(p), {})
        node[str(path[-1])] = var.get_metadata()["axes"]
    return out


def num_params(params: dict, include_embeddings: bool = True) -> int:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(
        int(x.size)
        for path, x in leaves
        if include_embeddings or not any(getattr(k, "key", None) in ("token_embed", "position_embed") for k in path)
    )
