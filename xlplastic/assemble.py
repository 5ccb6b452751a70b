"""Where a run's parameters start: one rule for continuing, adapting and assembling.

Every leaf belongs to a parameter group (groups.py). Per group, `init` says where it comes from:
a fresh draw (`reinit`, N(0, std) with the pad row zero), a named run (`groups_from`), the base run
(`from_run`), or this run's own initialisation. So language adaptation is "from the pretrained run,
token embeddings re-drawn", task adaptation is "from the pretrained run, plus a new task head", and
assembly is "from the task-adapted run, token embeddings from the language-adapted run".
"""

from __future__ import annotations

import jax

from xlplastic import checkpoint as ckpt_lib
from xlplastic.config import InitConfig
from xlplastic.errors import UserError
from xlplastic.forgetting import redraw_groups
from xlplastic.groups import base_group, path_str, selects

_INIT_STREAM = 0x1A17


def compose_params(icfg: InitConfig, params: dict, trainer, *, seed: int, pad_id: int,
                   tokenizer_sha: str | None = None, log=print) -> dict:
    """`params` (this run's fresh, sharded initialisation by `trainer`) with each group replaced as `icfg` says."""
    labels, shardings = trainer.labels, trainer.param_shardings
    flat_labels = {path_str(p): g for p, g in jax.tree_util.tree_leaves_with_path(labels)}
    flat_axes = {path_str(p): a for p, a in
                 jax.tree_util.tree_leaves_with_path(trainer.axes, is_leaf=lambda x: isinstance(x, tuple))}
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
    sources: dict[str, list[str]] = {}  # run -> groups it provides
    for g in sorted(set(flat_labels.values())):
        if any(selects(s, g) for s in icfg.reinit):
            continue
        run = _source(icfg, g)
        if run is not None:
            sources.setdefault(run, []).append(g)
    unknown = sorted(s for s in icfg.groups_from if not any(selects(s, g) for g in flat_labels.values()))
    if unknown:
        raise UserError(f"init.groups_from names group(s) {', '.join(unknown)} that this model does not have; "
                        f"expected some of {', '.join(sorted(set(flat_labels.values())))}")

    out = params
    for run, groups in sources.items():
        explicit = run != icfg.from_run or any(selects(s, g) for s in icfg.groups_from for g in groups)
        if tokenizer_sha and any(base_group(g) == "token_embedding" for g in groups):
            _check_tokenizer(run, tokenizer_sha)
        kept: list[str] = []

        def take(key, here, there, groups=groups, run=run, explicit=explicit, kept=kept):
            g = flat_labels[key]
            if g not in groups:
                return False
            if there is None:
                if base_group(g) == "task_head":
                    return False  # a new head for this run's task
                raise UserError(f"{run}: checkpoint has no parameter `{key}` (group {g}); expected a model of the same architecture")
            if tuple(there) != tuple(here):
                # A new vocabulary changes vocabulary-sized leaves (e.g. the MLM output bias): those start fresh,
                # unless they were asked for explicitly, in which case the vocabularies must agree.
                if not explicit and "vocab" in flat_axes[key]:
                    kept.append(key)
                    return False
                raise UserError(
                    f"{run}: `{key}` has shape {tuple(there)} but this run needs {tuple(here)}; expected the same "
                    "vocabulary and model shape (a tokenizer/vocabulary mismatch at assembly?)"
                )
            return True

        restored, _ = ckpt_lib.load_params(run, abstract, take)
        out = _overlay(out, restored)
        log(f"init: {', '.join(groups)} from {run}" + (f" (fresh, new vocabulary: {', '.join(kept)})" if kept else ""))
    if icfg.reinit:
        key = jax.random.fold_in(jax.random.PRNGKey(seed), _INIT_STREAM)
        out = jax.jit(
            lambda p: redraw_groups(p, labels, tuple(icfg.reinit), key, rule="normal", std=icfg.std, pad_id=pad_id),
            out_shardings=shardings,
        )(out)
        log(f"init: {', '.join(icfg.reinit)} drawn fresh, N(0, {icfg.std}), pad row zero")
    return out


def _source(icfg: InitConfig, label: str) -> str | None:
    """The run a leaf label comes from: `groups_from` by exact label, then by its group, else `from_run`."""
    if label in icfg.groups_from:
        return icfg.groups_from[label]
    return icfg.groups_from.get(base_group(label), icfg.from_run)


def _overlay(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _overlay(base[k], v) if isinstance(v, dict) else v
    return out


def _check_tokenizer(run: str, tokenizer_sha: str) -> None:
    """Embeddings only mean something with the tokenizer they were trained with."""
    state_dir, step = ckpt_lib.latest_state_dir(run)
    meta = ckpt_lib.Checkpointer(state_dir.parent.parent, async_save=False).read_meta(step)
    found = meta.get("tokenizer_sha")
    if found and found != tokenizer_sha:
        raise UserError(
            f"{run}: its token embeddings were trained with another tokenizer (sha {found[:12]}) than this run's "
            f"({tokenizer_sha[:12]}); expected the tokenizer of the language-adapted run"
        )

