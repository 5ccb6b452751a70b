"""AdamW per parameter group (optax.multi_transform), learning-rate schedules and clipping."""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

from xlplastic.config import Config, OptimizerConfig, ScheduleConfig
from xlplastic.groups import check_selectors, decay_mask, select_labels


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


def make_optimizer(opt: OptimizerConfig, labels, trainable: frozenset[str]) -> optax.GradientTransformation:
    """Global-norm clipping, then per parameter group either AdamW at unit learning rate (own state and
    step count; the train step scales its updates by `group_lrs(step)`) or, for frozen groups, nothing."""

    def adamw():
        return optax.adamw(1.0, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask)

    groups = sorted(set(jax.tree.leaves(labels)))
    tx = optax.multi_transform({g: adamw() if g in trainable else optax.set_to_zero() for g in groups}, labels)
    if opt.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(opt.clip_norm), tx)
    return tx


def make_group_lrs(cfg: Config, total_steps: int) -> Callable[[Any], dict[str, Any]]:
    """`step -> {group: learning rate}`, a pure function of the global step (so a resume replays it):
    the run's schedule, except for groups under active forgetting, which restart theirs every episode."""
    opt, sch, fcfg = cfg.train.optimizer, cfg.train.schedule, cfg.forgetting
    main = make_schedule(opt, sch, total_steps)
    own = {}
    if fcfg.every:
        from xlplastic.forgetting import episode_schedule, episode_warmup

        peak = opt.lr if fcfg.lr is None else fcfg.lr
        episode = episode_schedule(fcfg, peak, episode_warmup(fcfg, sch.warmup_steps, total_steps), total_steps)
        own = {g: episode for g in fcfg.groups}  # `token_embedding@fr` falls back to `token_embedding`

    def group_lrs(step) -> dict[str, Any]:
        base = main(step)
        return {g: f(step) for g, f in own.items()} | {"*": base}

    return group_lrs


def trainable_groups(cfg: Config, labels) -> frozenset[str]:
    """The leaf labels that train (`train.trainable` selectors, default all); unknown names are config
    errors. A task run leaves language-specific copies frozen when `model.separate.frozen_in_tasks`."""
    present = set(jax.tree.leaves(labels))
    want = cfg.train.trainable
    if want is not None:
        check_selectors(want, "train.trainable")
    out = frozenset(present) if want is None else select_labels(want, present)
    if cfg.task is not None and cfg.model.separate.frozen_in_tasks:
        out = frozenset(l for l in out if "@" not in l)
    return out
