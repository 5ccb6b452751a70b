"""Where a run's parameters start: one rule for continuing, adapting and assembling.

Every leaf belongs to a parameter group (groups.py). Per group, `init` says where it comes from:
a fresh draw (`reinit`, N(0, std) with the pad row zero), a named run (`groups_from`), the base run
(`from_run`), or this run's own initialisation. So language adaptation is "from the pretrained run,
token embeddings re-drawn", task adaptation is "from the pretrained run, plus a new task head", and
assembly is "from the task-adapted run, token embeddings from the language-adapted run".
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from xlplastic import checkpoint as ckpt_lib
from xlplastic.config import InitConfig
from xlplastic.errors import UserError
from xlplastic.forgetting import redraw_groups
from xlplastic.groups import base_group, path_str, selects
from xlplastic.hf_config import hf_dir
from xlplastic.paths import as_path

_INIT_STREAM = 0x1A17


def compose_params(icfg: InitConfig, params: dict | None, trainer, *, seed: int, pad_id: int,
                   tokenizer_sha: str | None = None, tokenizer=None, data_dir: str | None = None, log=print) -> dict:
    """`params` (this run's fresh, sharded initialisation by `trainer`) with each group replaced as `icfg` says.
    A source `hf:DIR` (init.from_hf) is read by hf.py onto the same shardings. `params` None: nothing was
    drawn (`uses_hf`); the leaves no source provides are then drawn alone, as trainer.init would draw them."""
    labels, shardings = trainer.labels, trainer.param_shardings
    flat_labels = {path_str(p): g for p, g in jax.tree_util.tree_leaves_with_path(labels)}
    flat_axes = {path_str(p): a for p, a in
                 jax.tree_util.tree_leaves_with_path(trainer.axes, is_leaf=lambda x: isinstance(x, tuple))}
    shapes = params if params is not None else jax.eval_shape(trainer.init)["params"]
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
    sources: dict[str, list[str]] = {}  # run -> groups it provides
    for g in sorted(set(flat_labels.values())):
        if any(selects(s, g) for s in icfg.reinit):
            continue
        if icfg.map_embeddings is not None and base_group(g) == "token_embedding":
            continue  # gathered through the dictionary below
        run = _source(icfg, g)
        if run is not None:
            sources.setdefault(run, []).append(g)
    unknown = sorted(s for s in icfg.groups_from if not any(selects(s, g) for g in flat_labels.values()))
    if unknown:
        raise UserError(f"init.groups_from names group(s) {', '.join(unknown)} that this model does not have; "
                        f"expected some of {', '.join(sorted(set(flat_labels.values())))}")

    out = params if params is not None else {}
    for run, groups in sources.items():
        explicit = run != icfg.base or any(selects(s, g) for s in icfg.groups_from for g in groups)
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

        if hf_dir(run) is not None:
            from xlplastic.hf import read_params

            restored, _ = read_params(run, abstract, take, log)
        else:
            restored, _ = ckpt_lib.load_params(run, abstract, take)
        out = _overlay(out, restored)
        log(f"init: {', '.join(groups)} from {run}" + (f" (fresh, new vocabulary: {', '.join(kept)})" if kept else ""))
    if params is None:  # draw only what no source gave (a new head, re-drawn or re-sized groups)
        have = {path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(out)}
        missing = frozenset(k for k in flat_labels if k not in have)
        if missing:
            out = _overlay(trainer.init_params(missing), out)
    if icfg.map_embeddings is not None:
        out = _overlay(out, map_vocabulary(icfg, abstract, flat_axes, tokenizer, data_dir, log))
    if icfg.reinit:
        key = jax.random.fold_in(jax.random.PRNGKey(seed), _INIT_STREAM)
        out = jax.jit(
            lambda p: redraw_groups(p, labels, tuple(icfg.reinit), key, rule="normal", std=icfg.std, pad_id=pad_id),
            out_shardings=shardings,
        )(out)
        log(f"init: {', '.join(icfg.reinit)} drawn fresh, N(0, {icfg.std}), pad row zero")
    return out


def _is_wordlevel(tok) -> bool:
    return json.loads(tok.to_str()).get("model", {}).get("type") == "WordLevel"


def vocabulary_map(src_tok, tgt_tok, tgt_to_src: dict[str, list[str]], size: int) -> tuple[np.ndarray, int]:
    """[size] source row of each target token id (specials by role, words through the dictionary, the
    rest, and ids past the tokenizer, to the source's unk); and how many target words had no source row."""
    from xlplastic.data.tokenizers import special_tokens

    s_sp, t_sp = special_tokens(src_tok), special_tokens(tgt_tok)
    roles = {getattr(t_sp, r): getattr(s_sp, r) for r in ("pad", "mask", "bos", "eos", "unk")}
    out = np.full(size, s_sp.unk, np.int32)
    missing = 0
    for t in range(min(size, tgt_tok.get_vocab_size())):
        if t in roles:
            out[t] = roles[t]
            continue
        if t in t_sp.all_ids:
            continue
        word = tgt_tok.id_to_token(t)
        src = next((i for w in tgt_to_src.get(word, ()) if (i := src_tok.token_to_id(w)) is not None), None)
        if src is None:
            missing += 1
        else:
            out[t] = src
    return out, missing


def map_vocabulary(icfg: InitConfig, abstract: dict, flat_axes: dict, tokenizer, data_dir, log) -> dict:
    """Every vocabulary-sized leaf (token embeddings, the MLM output bias) of this run, gathered row by
    row from the source run's through the dictionary (`init.map_embeddings`)."""
    from xlplastic.data.codeswitch import read_dictionary
    from xlplastic.data.sources import resolve_path
    from xlplastic.data.tokenizers import load_tokenizer

    m = icfg.map_embeddings
    run = m.from_run or icfg.base
    if hf_dir(run) is not None:
        raise UserError(f"init.map_embeddings from {run}: expected an xlplastic run with a word-level tokenizer, not an HF model")
    if run is None:
        raise UserError("init.map_embeddings needs a run to take the embeddings from; expected map_embeddings.from_run or init.from_run")
    if tokenizer is None:
        raise UserError("init.map_embeddings needs this run's tokenizer; expected a run with data.tokenizer")
    src_tok = load_tokenizer(run_tokenizer_path(as_path(run)))
    for name, tok in (("this run's", tokenizer), (f"{run}'s", src_tok)):
        if not hasattr(tok, "to_str") or not _is_wordlevel(tok):
            raise UserError(f"init.map_embeddings: {name} tokenizer is not word-level; expected data.tokenizer.kind: "
                            "wordlevel for both runs (only then is every token one dictionary word)")
    tgt_to_src: dict[str, list[str]] = {}
    for d in m.dictionaries:
        for w, srcs in read_dictionary(resolve_path(d, data_dir), reverse=True).items():
            tgt_to_src.setdefault(w, []).extend(srcs)
    vocab_leaves = {k: a for k, a in flat_axes.items() if a and a[0] == "vocab"}
    flat_abs = {path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
    size = next(iter(flat_abs[k].shape[0] for k in vocab_leaves))
    index, missing = vocabulary_map(src_tok, tokenizer, tgt_to_src, size)

    def take(key, here, there):
        return key in vocab_leaves and there is not None

    # Read each source leaf at its own shape (replicated when its vocabulary differs from this run's).
    _, flat_there = ckpt_lib.load_params(run, {}, lambda *a: False)
    src_abs = {}
    for key in vocab_leaves:
        if key not in flat_there:
            raise UserError(f"{run}: checkpoint has no parameter `{key}`; expected a model of the same architecture")
        x = flat_abs[key]
        shape = tuple(flat_there[key])
        sharding = x.sharding if shape == x.shape else jax.sharding.NamedSharding(x.sharding.mesh, jax.sharding.PartitionSpec())
        src_abs[key] = jax.ShapeDtypeStruct(shape, x.dtype, sharding=sharding)
    restored, _ = ckpt_lib.load_params(run, unflatten_dict(src_abs, sep="/"), take)
    flat_restored = flatten_dict(restored, sep="/")
    out = {}
    for key in vocab_leaves:
        gather = jax.jit(lambda x, i: jnp.take(x, i, axis=0), out_shardings=flat_abs[key].sharding)
        out[key] = gather(flat_restored[key], jnp.asarray(index))
    log(f"init: {', '.join(sorted(vocab_leaves))} gathered from {run} through {len(tgt_to_src)} dictionary words"
        + (f" ({missing} tokens without a source word: its unk row)" if missing else ""))
    return unflatten_dict(out, sep="/")


def run_tokenizer_path(d: Path) -> Path:
    """A finished run's tokenizer: its multilingual vocabulary.json if it has one, else tokenizer.json
    (an `hf:DIR` model's: DIR/tokenizer.json)."""
    from xlplastic.data.vocabulary import FILENAME

    if (h := hf_dir(d)) is not None:
        return h / "tokenizer.json"
    return d / FILENAME if (d / FILENAME).is_file() else d / "tokenizer.json"


def _source(icfg: InitConfig, label: str) -> str | None:
    """The run a leaf label comes from: `groups_from` by exact label, then by its group, else `from_run`."""
    if label in icfg.groups_from:
        return icfg.groups_from[label]
    return icfg.groups_from.get(base_group(label), icfg.base)


def _overlay(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _overlay(base.get(k, {}), v) if isinstance(v, dict) else v
    return out


def _check_tokenizer(run: str, tokenizer_sha: str) -> None:
    """Embeddings only mean something with the tokenizer they were trained with."""
    if hf_dir(run) is not None:
        from xlplastic.hf import check_tokenizer

        return check_tokenizer(run, tokenizer_sha)
    state_dir, step = ckpt_lib.latest_state_dir(run)
    meta = ckpt_lib.Checkpointer(state_dir.parent.parent, async_save=False).read_meta(step)
    found = meta.get("tokenizer_sha")
    if found and found != tokenizer_sha:
        raise UserError(
            f"{run}: its token embeddings were trained with another tokenizer (sha {found[:12]}) than this run's "
            f"({tokenizer_sha[:12]}); expected the tokenizer of the language-adapted run"
        )

