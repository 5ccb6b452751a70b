"""AdamW per parameter group (optax.multi_transform), learning-rate schedules and clipping."""

from __future__ import annotations

import jax
import optax

from xlplastic.config import OptimizerConfig, ScheduleConfig
from xlplastic.groups import decay_mask


def make_schedule(opt: OptimizerConfig, sch: ScheduleConfig, total_steps: int) -> optax.Schedule:
    """Warm-up to `opt.lr`, then the chosen decay reaching `end_lr` at `total_steps`."""
    lr, warm = opt.lr, sch.warmup_steps
    decay_steps = max(total_steps - warm, 1)
    if sch.kind == "linear":
        decay = optax.linear_schedule(lr, sch.end_lr, decay_steps)
    elif sch.kind == "polynomial":
        decay = optax.polynomial_schedule(lr, sch.end_lr, sch.power, decay_steps)
    elif sch.kind == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=sch.end_lr / lr if lr else 0.0)
    elif sch.kind == "inverse_sqrt":
        w = max(warm, 1)

        def decay(count):
            return lr * (w / (count + w)) ** 0.5

    else:  # constant
        decay = optax.constant_schedule(lr)
    if warm <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), decay], [warm])


def make_optimizer(opt: OptimizerConfig, sch: ScheduleConfig, total_steps: int, labels) -> optax.GradientTransformation:
    """Global-norm clipping, then one AdamW per parameter group (own state, own step count)."""
    schedule = make_schedule(opt, sch, total_steps)

    def adamw():
        return optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask)

    groups = sorted(set(jax.tree.leaves(labels)))
    tx = optax.multi_transform({g: adamw() for g in groups}, labels)
    if opt.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(opt.clip_norm), tx)
    return tx

