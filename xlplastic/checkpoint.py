"""Orbax checkpoints: async saves, keep-last-N, resume from the latest complete step.

A checkpoint holds the train state (`step`, `params`, `opt_state`) and a JSON `meta` item describing
what it is compatible with (vocabulary size, model shape, tokenizer fingerprint). The data position
and the RNG need no storage of their own: both are functions of (seed, step). Orbax writes to a
temporary folder and renames it when complete, so an interrupted save never looks like a checkpoint.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from xlplastic.errors import UserError

# Model fields that change parameter shapes: a checkpoint must agree on all of them.
SHAPE_KEYS = ("hidden_size", "num_layers", "num_heads", "mlp_dim", "max_positions", "type_vocab_size", "num_languages", "norm",
              "languages", "separate")
# What a checkpoint written before a key existed is taken to have (those keys did not change shapes then).
_SHAPE_DEFAULTS = {"languages": [], "separate": {"embeddings": False, "positions": None, "layers": 0, "frozen_in_tasks": True}}


def _shape_value(model: dict, key: str):
    v = model.get(key, _SHAPE_DEFAULTS.get(key))
    if key == "separate" and isinstance(v, dict):  # only what changes parameter shapes
        emb = bool(v.get("embeddings"))
        return (emb, emb if v.get("positions") is None else bool(v["positions"]), int(v.get("layers") or 0))
    return v


def make_meta(vocab_size: int, model_cfg: dict[str, Any], tokenizer_sha: str | None, extra: dict | None = None) -> dict:
    return {
        "vocab_size": int(vocab_size),
        "model": {k: model_cfg.get(k, _SHAPE_DEFAULTS.get(k)) for k in SHAPE_KEYS},
        "tokenizer_sha": tokenizer_sha,
        **(extra or {}),
    }


def check_compatible(found: dict, expected: dict, where: str) -> None:
    """One line naming the first mismatch between a checkpoint and the run that wants to resume from it."""
    if found.get("vocab_size") != expected["vocab_size"]:
        raise UserError(
            f"{where}: checkpoint vocabulary size {found.get('vocab_size')} does not match the tokenizer's "
            f"{expected['vocab_size']}; expected the tokenizer this checkpoint was trained with"
        )
    for k in SHAPE_KEYS:
        there, here = _shape_value(found.get("model", {}), k), _shape_value(expected["model"], k)
        if there != here:
            raise UserError(
                f"{where}: checkpoint has model.{k}={found.get('model', {}).get(k)!r} but the config asks for "
                f"{expected['model'][k]!r}; expected matching model shapes"
            )
    fs, es = found.get("tokenizer_sha"), expected.get("tokenizer_sha")
    if fs and es and fs != es:
        raise UserError(f"{where}: checkpoint was trained with a different tokenizer (sha {fs[:12]} vs {es[:12]})")


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, meta: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def read_meta(self, step: int) -> dict:
        where = self.directory / str(step)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - Orbax raises many types for unreadable folders
            raise UserError(f"{where}: checkpoint metadata is unreadable ({type(e).__name__}); expected an xlplastic checkpoint") from None
        if not isinstance(out.meta, dict):
            raise UserError(f"{where}: checkpoint metadata is missing; expected an xlplastic checkpoint")
        return out.meta

    def restore(self, step: int, abstract_state: dict, expected_meta: dict) -> dict:
        """Restores onto the shardings of `abstract_state` (ShapeDtypeStructs with .sharding)."""
        where = self.directory / str(step)
        check_compatible(self.read_meta(step), expected_meta, str(where))
        undo = _quiet_abandoned_reads()
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as e:  # noqa: BLE001
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            msg = msg.split(" See full TensorStore details")[0][:200]  # the rest is a repr of a bound method
            raise UserError(f"{where}: checkpoint is corrupt or incompatible ({msg}); expected a complete checkpoint of this model") from None
        undo()  # a complete restore leaves nothing in flight; after a failed one the filter stays
        return out.state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _quiet_abandoned_reads():
    """When one array of a restore fails, Orbax gives up while other TensorStore reads are in flight; as
    they finish, their callbacks hit its closed event loop and print tracebacks ("Event loop is closed",
    "Task exception was never retrieved") around the one-line error, during the restore and after it.
    That noise, and only it, is dropped; returns a function that undoes this."""
    prev = sys.unraisablehook

    def hook(u):
        if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
            return
        prev(u)

    def no_orphan_task_errors(record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in record.getMessage()

    sys.unraisablehook = hook
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addFilter(no_orphan_task_errors)

    def undo() -> None:
        if sys.unraisablehook is hook:
            sys.unraisablehook = prev
        asyncio_log.removeFilter(no_orphan_task_errors)

    return undo


def abstract_like(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def latest_state_dir(run: str | Path) -> tuple[Path, int]:
    """The `state` folder of the latest complete checkpoint of a run directory (or its checkpoints/)."""
    root = Path(run).expanduser().resolve()
    folder = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    if not folder.is_dir():
        raise UserError(f"{root}: no such run directory; expected a run folder holding checkpoints/")
    mgr = ocp.CheckpointManager(folder, item_names=("state", "meta"))
    step = mgr.latest_step()
    mgr.close()
    if step is None:
        raise UserError(f"{folder}: no complete checkpoint; expected a finished (or checkpointed) run to start from")
    return folder / str(step) / "state", step


def load_params(run: str | Path, abstract_params: dict, take) -> tuple[dict, dict[str, tuple]]:
    """Parameters of another run's latest checkpoint, onto the shardings of `abstract_params`.

    `take(path, shape_here, shape_there)` decides per leaf: True restores it; False leaves it out (the
    caller keeps its own fresh value). Returns (restored leaves as a nested dict, {path: shape there}).
    Only the chosen leaves are read, so a task head or a new vocabulary does not need the whole state.
    """
    state_dir, _ = latest_state_dir(run)
    try:
        there = ocp.PyTreeCheckpointHandler().metadata(state_dir)
        there = getattr(there, "tree", there)["params"]
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{state_dir}: checkpoint is unreadable ({type(e).__name__}); expected an xlplastic checkpoint") from None
    flat_there = {"/".join(map(str, k)): v.shape for k, v in _flatten_dict(there).items()}
    chosen: dict = {}
    for path, x in _flatten_dict(abstract_params).items():
        key = "/".join(map(str, path))
        if take(key, x.shape, flat_there.get(key)):
            node = chosen
            for p in path[:-1]:
                node = node.setdefault(p, {})
            node[path[-1]] = x
    if not chosen:
        return {}, flat_there
    item = {"params": chosen}
    restored = ocp.PyTreeCheckpointer().restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
        ),
    )
    return restored["params"], flat_there


def _flatten_dict(tree: dict, prefix: tuple = ()) -> dict[tuple, Any]:
    out: dict[tuple, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten_dict(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out
