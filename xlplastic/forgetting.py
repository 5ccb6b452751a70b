"""Active forgetting (Chen et al., NeurIPS 2023): periodic re-initialisation of parameter groups.

After every update whose count is a multiple of K (within [start, stop], never at the final step) the
chosen groups (default: the token embeddings, hence the tied output weights) are re-drawn, their
optimizer moments and step count restart, and their learning rate replays a warm-up + linear decay
within each episode. Everything is a pure function of the step, so it runs inside the jitted train
step (no recompilation, no host transfer, shardings unchanged) and is identical across replicas,
hosts and resumes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from xlplastic.config import ForgettingConfig
from xlplastic.groups import base_group, path_str, selects
from xlplastic.layout import is_stacked, unrolled_positions

_RESET_STREAM = 0x0F0E  # folded into the run's key: reset draws never collide with masking/dropout


def reset_range(fcfg: ForgettingConfig, total_steps: int) -> tuple[int, int]:
    """(first, last) episode index j such that a reset happens after update j*K."""
    K = fcfg.every
    last_step = total_steps - 1 if fcfg.stop is None else min(fcfg.stop, total_steps - 1)
    return max(-(-fcfg.start // K), 1), last_step // K


def reset_steps(fcfg: ForgettingConfig, total_steps: int) -> list[int]:
    """The steps (update counts) after which a reset happens; for reports and tests."""
    if not fcfg.every:
        return []
    lo, hi = reset_range(fcfg, total_steps)
    return [j * fcfg.every for j in range(lo, hi + 1)]


def is_reset(fcfg: ForgettingConfig, total_steps: int, new_step):
    """Whether the update that brings the count to `new_step` is followed by a reset (traceable)."""
    K = fcfg.every
    lo, hi = reset_range(fcfg, total_steps)
    j = new_step // K
    return (new_step % K == 0) & (j >= lo) & (j <= hi)


def episode_schedule(fcfg: ForgettingConfig, peak: float, warmup: int, total_steps: int) -> optax.Schedule:
    """LR of the reset groups at update `step` (0-based count of updates done): warm-up, then a linear
    decay to `end_lr` over the current episode (from the last reset, or 0, to the next, or the end)."""
    K = fcfg.every
    lo, hi = reset_range(fcfg, total_steps)

    def schedule(step):
        step = jnp.asarray(step, jnp.int32)
        j = step // K  # the last multiple of K at or before `step`
        last = jnp.where(j >= lo, jnp.minimum(j, hi) * K, 0)
        nxt_j = jnp.maximum(j + 1, lo)
        nxt = jnp.where(nxt_j <= hi, nxt_j * K, total_steps)
        pos = (step - last).astype(jnp.float32)
        length = jnp.maximum(nxt - last, 1).astype(jnp.float32)
        warm = jnp.minimum(float(max(warmup, 0)), length - 1.0)
        up = peak * (pos + 1.0) / jnp.maximum(warm, 1.0)
        frac = jnp.clip((pos - warm) / jnp.maximum(length - warm, 1.0), 0.0, 1.0)
        down = peak + (fcfg.end_lr - peak) * frac
        return jnp.where(pos < warm, up, down)

    return schedule


def episode_warmup(fcfg: ForgettingConfig, run_warmup: int, total_steps: int) -> int:
    """The reference compresses the whole schedule into each episode: warm-up / (steps // K)."""
    if fcfg.warmup_steps is not None:
        return fcfg.warmup_steps
    return round(run_warmup / max(total_steps // fcfg.every, 1))


def redraw(key, x, *, rule: str, std: float, pad_row: int | None):
    """A fresh draw shaped like `x`: N(0, std) or N(mean(x), std(x)); the padding row zeroed."""
    if rule == "matrix_stats":
        xf = x.astype(jnp.float32)
        mean, scale = xf.mean(), xf.std()
    else:
        mean, scale = 0.0, std
    new = (mean + scale * jax.random.normal(key, x.shape, jnp.float32)).astype(x.dtype)
    if pad_row is not None and x.ndim == 2 and 0 <= pad_row < x.shape[0]:
        new = new.at[pad_row].set(0)
    return new


def redraw_groups(params, labels, groups, key, *, rule: str, std: float, pad_id: int | None):
    """`params` with every leaf of `groups` re-drawn (one key per leaf, folded from `key` with the leaf's
    position in the unrolled model; a scanned stack is re-drawn layer by layer, so both layouts of
    `model.scan_layers` draw the same values)."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = [path_str(p) for p, _ in with_paths]
    positions = unrolled_positions(keys, {k: x.shape[0] for k, (_, x) in zip(keys, with_paths) if is_stacked(k)})
    names = jax.tree.leaves(labels)
    out = []
    for k, (_, x), g, pos in zip(keys, with_paths, names, positions):
        if any(selects(s, g) for s in groups):
            pad = pad_id if base_group(g) == "token_embedding" else None
            if is_stacked(k):
                x = jnp.stack([redraw(jax.random.fold_in(key, i), x[j], rule=rule, std=std, pad_row=pad)
                               for j, i in enumerate(pos)])
            else:
                x = redraw(jax.random.fold_in(key, pos[0]), x, rule=rule, std=std, pad_row=pad)
        out.append(x)
    return jax.tree.unflatten(treedef, out)


def restart_group_states(opt_state, fresh_state, groups):
    """Optimizer state with the per-group states of `groups` taken from `fresh_state` (zero moments,
    step count 0: the bias correction restarts as in the reference's AdamEF); the rest untouched."""

    def swap(node, fresh):
        if isinstance(node, optax.transforms.PartitionState):
            inner = {g: (fresh.inner_states[g] if any(selects(x, g) for x in groups) else s)
                     for g, s in node.inner_states.items()}
            return node._replace(inner_states=inner)
        return node

    is_part = lambda x: isinstance(x, optax.transforms.PartitionState)  # noqa: E731
    return jax.tree.map(swap, opt_state, fresh_state, is_leaf=is_part)


def make_reset(fcfg: ForgettingConfig, total_steps: int, labels, tx, base_key, pad_id: int):
    """`maybe_reset(params, opt_state, new_step) -> (params, opt_state)` for use inside the train step."""
    groups = tuple(fcfg.groups)
    key0 = jax.random.fold_in(base_key, _RESET_STREAM)

    def do_reset(params, opt_state, new_step):
        key = jax.random.fold_in(key0, new_step)
        params = redraw_groups(params, labels, groups, key, rule=fcfg.init, std=fcfg.std, pad_id=pad_id)
        return params, restart_group_states(opt_state, tx.init(params), groups)

    def maybe_reset(params, opt_state, new_step):
        return jax.lax.cond(
            is_reset(fcfg, total_steps, new_step),
            do_reset,
            lambda p, o, s: (p, o),
            params,
            opt_state,
            new_step,
        )

    return maybe_reset

