"""The pure, sharded train step: `(state, batch) -> (state, metrics)` under `jax.jit` with donation.

State is a plain dict `{step, params, opt_state}` of global arrays. The RNG is not state: masking and
dropout keys are `fold_in(PRNGKey(seed), step)`, so a resumed run draws exactly what an uninterrupted
one would. Parameters are created already sharded (jit with out_shardings): nothing is materialised
whole on one host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.traverse_util import unflatten_dict
from jax.sharding import Mesh

from xlplastic import model as model_lib
from xlplastic.config import Config
from xlplastic.errors import UserError
from xlplastic.groups import base_group, label_params, path_str
from xlplastic.masking import mask_tokens
from xlplastic.forgetting import is_reset, make_reset
from xlplastic.optim import make_group_lrs, make_optimizer, trainable_groups
from xlplastic.sharding import activation_rules, batch_sharding, replicated, tree_shardings


# A measured opt-in for CPU runs (docs/benchmarks.md): matmuls through oneDNN, the library PyTorch's CPU
# kernels use, instead of XLA's default YNNPACK; ~12% faster steps on the benchmark model. Not the
# default: XLA's oneDNN fusion is experimental and aborts the process on some programs (seen with
# `model.separate.embeddings`: "partition compile failed").
CPU_ONEDNN_OPTIONS = {"xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def compiler_options(cfg: Config) -> dict[str, Any]:
    """`train.compiler_options`, checked once on a trivial program so that a misspelt option is one
    clear error before any real compilation."""
    opts = dict(cfg.train.compiler_options or {})
    if opts:
        try:
            jax.jit(lambda x: x + 1, compiler_options=opts).lower(np.float32(0)).compile()
        except Exception as e:  # XLA's own message names the option and what is wrong with it
            msg = str(e).splitlines()[0].split("INVALID_ARGUMENT: ")[-1]
            raise UserError(f"train.compiler_options: {msg}; expected XLA DebugOptions fields and values") from None
    return opts


@dataclass(frozen=True)
class Specials:
    pad: int
    mask: int
    all_ids: tuple[int, ...]


@dataclass
class Trainer:
    """Everything compiled for one run: shardings, optimizer, and the jitted step/eval functions."""

    cfg: Config
    mesh: Mesh
    vocab_size: int
    specials: Specials
    graphdef: Any
    abstract_state: Any  # nnx.State of abstract params (for merging pure dicts back into a module)
    tx: optax.GradientTransformation
    labels: dict
    state_shardings: dict
    init: Callable[[], dict]
    init_from: Callable[[dict], dict]  # a fresh state around given params (step 0, new optimizer state)
    init_params: Callable[[frozenset], dict]  # only these leaves (path strings) of a fresh draw, as init() draws them
    step: Callable[[dict, dict], tuple[dict, dict]]
    steps: Callable[[dict, dict], tuple[dict, dict]]  # several steps per call: batches [K, B, ...] -> metrics [K]
    eval_step: Callable[[dict, dict], dict]
    merge: Callable[[dict], model_lib.Encoder]  # encoder module from the params dict (ignores extra heads)
    param_shardings: dict
    axes: dict  # logical axis names per parameter (same structure as the params)
    trainable: frozenset[str]


def _mlm_sums(model: model_lib.Encoder, masked, tokens_BxT, lang_B, pad: int, dropout_key):
    """Summed masked-LM loss, number of predictions and correct predictions (vocab only at masked spots)."""
    lengths_B = (tokens_BxT != pad).sum(-1).astype(jnp.int32)
    h_BxTxD = model.encode(masked.inputs_BxT, lengths_B, lang_B=lang_B, dropout_key=dropout_key)
    h_BxPxD = jnp.take_along_axis(h_BxTxD, masked.positions_BxP[..., None], axis=1)
    logits_BxPxV = model.mlm_logits(h_BxPxD, lang_B)
    # The target's logit through a one-hot product rather than a gather: its gradient is then an
    # elementwise product XLA fuses, not a scatter into a zeroed [B, P, V] buffer. Exact: x*1 + 0s.
    onehot_BxPxV = jax.nn.one_hot(masked.targets_BxP, logits_BxPxV.shape[-1], dtype=logits_BxPxV.dtype)
    target_BxP = (logits_BxPxV * onehot_BxPxV).sum(-1)
    nll_BxP = jax.nn.logsumexp(logits_BxPxV, axis=-1) - target_BxP
    w = masked.weights_BxP
    # Correct = the target has the largest logit (the max is the one logsumexp takes; no argmax pass).
    correct = ((target_BxP >= jax.lax.stop_gradient(logits_BxPxV).max(-1)) * w).sum()
    return (nll_BxP * w).sum(), (w.sum(), correct)


def like_params(tree, abstract_params, param_shardings, default):
    """Shardings for an optimizer-state tree: a leaf whose dict-key path and shape match a parameter's
    takes that parameter's sharding (Adam moments), anything else (counts, scalars) gets `default`."""
    by_path = {}
    for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(abstract_params), jax.tree.leaves(param_shardings)):
        by_path[_dict_path(path)] = (x.shape, s)

    def pick(path, x):
        keys = _dict_path(path)
        for i in range(len(keys)):  # optax wraps moments in dicts of its own (e.g. per-group states)
            hit = by_path.get(keys[i:])
            if hit is not None and hit[0] == x.shape:
                return hit[1]
        return default

    return jax.tree_util.tree_map_with_path(pick, tree)


def _dict_path(path) -> tuple:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


@dataclass(frozen=True)
class Objective:
    """What a run trains: masked LM (pretraining, language adaptation) or a task head (task adaptation).

    `prepare(key, batch)` runs once on the full batch (MLM masking, so accumulation does not change what
    is masked); `loss(encoder, params, batch, key)` returns (summed loss, (count, correct)) for a
    micro-batch; `extra_params()` adds parameters beyond the encoder (a task head under `task_head`).
    """

    batch_ndims: dict[str, int]
    loss: Callable
    prepare: Callable = lambda key, batch: batch
    extra_params: Callable[[], dict] | None = None
    extra_axes: dict | None = None


def mlm_objective(cfg: Config, vocab_size: int, specials: Specials, language_ids=None) -> Objective:
    """Masked LM. `language_ids` (one array of token ids per model language) restricts random
    replacements to the row's own language (`data.random_within_language`)."""
    dcfg = cfg.data
    mask_kwargs = dict(
        special_ids=specials.all_ids,
        mask_id=specials.mask,
        vocab_size=vocab_size,
        mask_prob=dcfg.mask_prob,
        mask_token_prob=dcfg.mask_token_prob,
        random_token_prob=dcfg.random_token_prob,
    )

    if language_ids is None and dcfg.random_within_language:
        raise ValueError("data.random_within_language needs the token ids of each language")
    if language_ids is not None:
        width = max(1, max(len(ids) for ids in language_ids))
        table = np.zeros((len(language_ids), width), np.int32)
        for l, ids in enumerate(language_ids):
            table[l, : len(ids)] = ids
        mask_kwargs.update(random_ids_LxM=table, random_counts_L=np.array([len(i) for i in language_ids], np.int32))

    def prepare(key, batch):
        return {**batch, "masked": mask_tokens(key, batch["tokens"], lang_B=batch.get("lang"), **mask_kwargs)}

    def loss(encoder, params, batch, key):
        return _mlm_sums(encoder, batch["masked"], batch["tokens"], batch.get("lang"), specials.pad, key)

    ndims = {"tokens": 2} | ({"lang": 1} if cfg.batch_has_language else {})
    return Objective(batch_ndims=ndims, loss=loss, prepare=prepare)


def make_train_step(objective: Objective, merge: Callable, tx: optax.GradientTransformation, labels, trainable,
                    group_lrs: Callable, base_key, *, accum: int = 1, mesh: Mesh | None = None, rules=None,
                    reset: Callable | None = None, reset_flag: Callable | None = None,
                    reset_groups: tuple[str, ...] = ()) -> Callable[[dict, dict], tuple[dict, dict]]:
    """The pure step `(state, batch) -> (state, metrics)`, before jit: masking/dropout keys from
    (base_key, step); gradients (over `accum` micro-batches) of the objective, zero for frozen groups;
    per-group learning rates; then, where `reset` says so, the active-forgetting rewrite of params and
    optimizer state. A module-level function so it can be tested on a toy objective without a trainer."""

    def frozen_to_zero(grads):
        # Static per leaf: XLA drops the gradient computation of frozen groups altogether.
        return jax.tree.map(lambda g, l: g if l in trainable else jnp.zeros_like(g), grads, labels)

    def apply(params, updates, lrs):
        def one(p, u, l):
            if l not in trainable:
                return p  # frozen leaves stay bit-identical
            return (p + lrs.get(l, lrs.get(base_group(l), lrs["*"])) * u).astype(p.dtype)

        return jax.tree.map(one, params, updates, labels)

    def train_step(state, batch):
        with activation_rules(mesh, rules or {}):
            step = state["step"]
            key = jax.random.fold_in(base_key, step)
            k_mask, k_drop = jax.random.split(key)
            batch = objective.prepare(k_mask, batch)

            def grads_of(params, micro, key):
                def loss_fn(p):
                    return objective.loss(merge(p), p, micro, key)

                return jax.value_and_grad(loss_fn, has_aux=True)(params)

            params = state["params"]
            if accum == 1:
                (loss_sum, (n, correct)), grads = grads_of(params, batch, k_drop)
            else:
                # Micro-batch a takes rows a, a+A, ...: every device keeps an equal share of each micro-batch.
                def split(x):
                    x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:])
                    return jnp.swapaxes(x, 0, 1)

                micros = jax.tree.map(split, batch)

                def body(carry, inp):
                    i, micro = inp
                    (ls, (nn, cc)), g = grads_of(params, micro, jax.random.fold_in(k_drop, i))
                    acc_g, acc_l, acc_n, acc_c = carry
                    return (jax.tree.map(jnp.add, acc_g, g), acc_l + ls, acc_n + nn, acc_c + cc), None

                zeros = jax.tree.map(jnp.zeros_like, params)
                (grads, loss_sum, n, correct), _ = jax.lax.scan(
                    body, (zeros, 0.0, 0.0, 0.0), (jnp.arange(accum), micros)
                )
            denom = jnp.maximum(n, 1.0)
            grads = frozen_to_zero(jax.tree.map(lambda g: g / denom, grads))
            updates, opt_state = tx.update(grads, state["opt_state"], params)
            lrs = group_lrs(step)
            params = apply(params, updates, lrs)
            metrics = {
                "loss": loss_sum / denom,
                "accuracy": correct / denom,
                "grad_norm": optax.tree.norm(grads),
                "param_norm": optax.tree.norm(params),
                "predictions": n,
                "lr": lrs["*"],
            }
            if reset is not None:
                for g in reset_groups:
                    metrics[f"lr_{g}"] = lrs[g]
                metrics["reset"] = reset_flag(step + 1).astype(jnp.float32)
                params, opt_state = reset(params, opt_state, step + 1)
            return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics

    return train_step


def build_trainer(
    cfg: Config, mesh: Mesh, vocab_size: int, specials: Specials, objective: Objective | None = None
) -> Trainer:
    mcfg, tcfg = cfg.model, cfg.train
    rules = cfg.mesh.rules
    objective = objective or mlm_objective(cfg, vocab_size, specials)
    abstract_model = nnx.eval_shape(lambda: model_lib.create(mcfg, vocab_size, tcfg.seed))
    graphdef, abstract_state = nnx.split(abstract_model, nnx.Param)
    abstract_params = nnx.to_pure_dict(abstract_state)
    axes = model_lib.logical_axes(abstract_model)
    if objective.extra_params is not None:
        abstract_params = {**abstract_params, **jax.eval_shape(objective.extra_params)}
        axes = {**axes, **objective.extra_axes}
    param_shardings = tree_shardings(abstract_params, axes, mesh, rules)
    labels = label_params(abstract_params)
    trainable = trainable_groups(cfg, labels)
    tx = make_optimizer(tcfg.optimizer, labels, trainable)
    group_lrs = make_group_lrs(cfg, tcfg.steps)
    fcfg = cfg.forgetting
    base_key = jax.random.PRNGKey(tcfg.seed)
    maybe_reset = make_reset(fcfg, tcfg.steps, labels, tx, base_key, specials.pad) if fcfg.every else None

    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    rep = replicated(mesh)
    opt_shardings = like_params(abstract_opt, abstract_params, param_shardings, rep)
    state_shardings = {"step": rep, "params": param_shardings, "opt_state": opt_shardings}
    encoder_keys = tuple(nnx.to_pure_dict(abstract_state))

    def merge(params):
        return model_lib.merge(graphdef, abstract_state, {k: params[k] for k in encoder_keys})

    def draw_params():
        m = model_lib.create(mcfg, vocab_size, tcfg.seed)
        params = nnx.to_pure_dict(nnx.state(m, nnx.Param))
        if objective.extra_params is not None:
            params = {**params, **objective.extra_params()}
        return params

    def init_state():
        params = jax.lax.with_sharding_constraint(draw_params(), param_shardings)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    init = jax.jit(init_state, out_shardings=state_shardings)
    init_from = jax.jit(lambda params: {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)},
                        in_shardings=(param_shardings,), out_shardings=state_shardings, donate_argnums=(0,))

    def init_params(keys: frozenset) -> dict:
        """The leaves `keys` of init()'s draw, drawn alone: XLA drops the rest of the program, so parameters
        that come from elsewhere (an imported HF model) are never drawn just to be replaced."""
        flat_sh = {path_str(p): s for p, s in jax.tree_util.tree_leaves_with_path(param_shardings)}

        def subset(tree):
            return {k: v for k, v in ((path_str(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)) if k in keys}

        out = jax.jit(lambda: subset(draw_params()), out_shardings={k: flat_sh[k] for k in keys})()
        return unflatten_dict(out, sep="/")

    train_step = make_train_step(objective, merge, tx, labels, trainable, group_lrs, base_key, accum=tcfg.grad_accum,
                                 mesh=mesh, rules=rules, reset=maybe_reset,
                                 reset_flag=(lambda s: is_reset(fcfg, tcfg.steps, s)) if maybe_reset is not None else None,
                                 reset_groups=tuple(fcfg.groups) if maybe_reset is not None else ())

    xla = compiler_options(cfg)
    bsh = {k: batch_sharding(mesh, nd) for k, nd in objective.batch_ndims.items()}
    step_fn = jax.jit(
        train_step,
        in_shardings=(state_shardings, bsh),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
        compiler_options=xla,
    )

    # K steps in one call (`train.steps_per_call`): the same step scanned over a leading axis of K
    # batches. Bit-identical to K single calls; what it saves is per-call work outside the maths (the
    # runtime's fresh temporary buffer, hence its page faults on CPU, and dispatch).
    stacked = {k: batch_sharding(mesh, nd, leading=1) for k, nd in objective.batch_ndims.items()}
    steps_fn = jax.jit(
        lambda state, batches: jax.lax.scan(train_step, state, batches),
        in_shardings=(state_shardings, stacked),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
        compiler_options=xla,
    )

    eval_key = jax.random.PRNGKey(tcfg.seed + 1_000_003)

    def eval_step(params, batch):
        with activation_rules(mesh, rules):
            batch = objective.prepare(eval_key, batch)
            loss_sum, (n, correct) = objective.loss(merge(params), params, batch, None)
            return {"loss_sum": loss_sum, "predictions": n, "correct": correct}

    eval_fn = jax.jit(eval_step, in_shardings=(param_shardings, bsh), out_shardings=rep, compiler_options=xla)

    return Trainer(
        cfg=cfg,
        mesh=mesh,
        vocab_size=vocab_size,
        specials=specials,
        graphdef=graphdef,
        abstract_state=abstract_state,
        tx=tx,
        labels=labels,
        state_shardings=state_shardings,
        init=init,
        init_from=init_from,
        init_params=init_params,
        step=step_fn,
        steps=steps_fn,
        eval_step=eval_fn,
        merge=merge,
        param_shardings=param_shardings,
        axes=axes,
        trainable=trainable,
    )
