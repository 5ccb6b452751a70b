"""Orbax checkpoints: async saves, keep-last-N, resume from the latest complete step.

A checkpoint holds the train state (`step`, `params`, `opt_state`) and a JSON `meta` item describing
what it is compatible with (vocabulary size, model shape, tokenizer fingerprint). The data position
and the RNG need no storage of their own: both are functions of (seed, step). Orbax writes to a
temporary folder and renames it when complete, so an interrupted save never looks like a checkpoint.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax.traverse_util import unflatten_dict

from xlplastic import paths
from xlplastic.errors import UserError
from xlplastic.layout import layout_of, stack_map

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


class DamagedCheckpoint(UserError):
    """A checkpoint folder that cannot be read back (missing, truncated or changed files, no metadata)."""


class CheckpointWriteError(UserError):
    """A save failed (full disk, write error): the run stops with its own exit status; earlier
    checkpoints are untouched."""

    exit_code = 3


MANIFEST = "xlplastic_manifest.json"


def _crc(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in paths.files_under(folder) if p.name != MANIFEST}


def write_manifest(folder: Path) -> None:
    """Size and CRC-32 of every file of a finished checkpoint: what tells a damaged one from an intact one
    (reading it back costs about as much as a copy; Orbax's own commit marker only says the save ended)."""
    entries = {rel: [paths.size(p), _crc(p)] for rel, p in _files(folder).items()}
    paths.write_text_atomic(folder / MANIFEST, json.dumps({"files": entries}))


def damage(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it looks intact."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return "the checkpoint folder is empty"
    for item in ("state", "meta"):
        if not (folder / item).is_dir() or not any((folder / item).iterdir()):
            return f"its `{item}` item is missing"
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None  # saved by a run stopped before it could write one: the restore itself will tell
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is unreadable"
    for rel, (size, crc) in entries.items():
        p = folder / rel
        if not p.is_file():
            return f"file {rel} is missing"
        if paths.size(p) != size:
            return f"file {rel} has {paths.size(p)} of its {size} bytes"
        if _crc(p) != crc:
            return f"file {rel} does not match its checksum"
    return None


def _os_error(e: BaseException) -> OSError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e
        e = e.__cause__ or e.__context__
    return None


def _strerror(e: BaseException) -> str:
    """The errno text of a failed write, however deep Orbax / TensorStore wrapped it."""
    os_err = _os_error(e)
    if os_err is not None:
        return os_err.strerror or errno.errorcode.get(os_err.errno, str(os_err.errno))
    text = str(e)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO):
        msg = os.strerror(code)
        if msg in text or errno.errorcode[code] in text:
            return msg
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise UserError(f"checkpoint.keep={keep}: expected >= 1 (the newest checkpoint is what a rerun resumes from)")
        self.directory = paths.as_path(directory, resolve=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        self._unverified: list[int] = []  # saved steps whose manifest is not written yet (async saves)
        self._failed: CheckpointWriteError | None = None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, meta: dict) -> None:
        self._finish()  # the previous save is complete before this one starts: manifest it
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - any write failure becomes one line
            self._fail(step, e)
        self._unverified.append(step)

    def _finish(self) -> None:
        """Waits for the save in flight; writes manifests of finished saves (process 0)."""
        if self._failed is not None:
            raise self._failed
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._fail(self._unverified[-1] if self._unverified else None, e)
        steps, self._unverified = self._unverified, []
        if jax.process_index() == 0:
            for s in steps:
                folder = self.directory / str(s)
                if folder.is_dir():
                    try:
                        write_manifest(folder)
                    except OSError as e:
                        self._fail(s, e)

    def _fail(self, step: int | None, e: BaseException) -> None:
        """One line naming the path, the errno text and the newest intact checkpoint; the partial save's
        temporary folder is removed (it is never read, and it holds the space a full disk needs)."""
        _quiet_abandoned_reads()  # the failed save's other writes end with tracebacks: the one line says it all
        if jax.process_index() == 0:
            # A writer thread of the failed async save may still re-create the folder (waiting for it can
            # block on the full disk): remove again until none has appeared for 0.2 s, for at most 5 s.
            quiet = 0
            for _ in range(100):
                tmps = list(self.directory.glob("*.orbax-checkpoint-tmp*"))
                quiet = 0 if tmps else quiet + 1
                if quiet >= 4:
                    break
                for tmp in tmps:
                    paths.rmtree(tmp)
                time.sleep(0.05)
            if step is not None and (self.directory / str(step)).is_dir() and damage(self.directory / str(step)):
                paths.rmtree(self.directory / str(step))
        try:
            self.manager.reload()
        except Exception:  # noqa: BLE001
            pass
        intact = [s for s in sorted(self.manager.all_steps(), reverse=True)
                  if s != step and damage(self.directory / str(s)) is None]
        newest = f"{self.directory / str(intact[0])}" if intact else "none"
        where = self.directory / str(step) if step is not None else self.directory
        self._failed = CheckpointWriteError(
            f"checkpoint save to {where} failed: {_strerror(e)}; the newest intact checkpoint is {newest} "
            "(free space or fix the path, then rerun the same command to resume from it)")
        raise self._failed from None

    def read_meta(self, step: int) -> dict:
        where = self.directory / str(step)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - Orbax raises many types for unreadable folders
            raise DamagedCheckpoint(f"{where}: checkpoint metadata is unreadable ({type(e).__name__}); expected an xlplastic checkpoint") from None
        if not isinstance(out.meta, dict):
            raise DamagedCheckpoint(f"{where}: checkpoint metadata is missing; expected an xlplastic checkpoint")
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
            raise DamagedCheckpoint(f"{where}: checkpoint is corrupt or incompatible ({msg}); expected a complete checkpoint of this model") from None
        undo()  # a complete restore leaves nothing in flight; after a failed one the filter stays
        return out.state

    def restore_latest(self, abstract_state: dict, expected_meta: dict, warn=print) -> tuple[int, dict] | None:
        """(step, state) of the newest checkpoint that is intact and restores, or None when there is none.

        A damaged newer checkpoint is moved to `damaged_checkpoints/` beside `checkpoints/` (one warning
        line each) once an older one has restored, so later saves can reuse its step. When every
        checkpoint is damaged nothing is moved and the run stops with one line: starting over silently
        would throw away a long run."""
        damaged: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            folder = self.directory / str(step)
            problem = damage(folder)
            if problem is None:
                try:
                    state = self.restore(step, abstract_state, expected_meta)
                except DamagedCheckpoint as e:
                    problem = str(e).split(": ", 1)[-1]
                else:
                    self._set_aside(damaged, step, warn)
                    return step, state
            damaged.append((step, problem))
        if damaged:
            listing = "; ".join(f"step {s}: {p}" for s, p in damaged)
            raise DamagedCheckpoint(f"{self.directory}: no intact checkpoint to resume from ({listing}); "
                                    "expected at least one; remove the folder to start the run over")
        return None

    def _set_aside(self, damaged: list[tuple[int, str]], resumed: int, warn) -> None:
        if not damaged:
            return
        aside = self.directory.parent / "damaged_checkpoints"
        for step, problem in damaged:
            dest = aside / f"{step}-{int(time.time())}"
            warn(f"checkpoint {self.directory / str(step)} is damaged ({problem}); moved to {dest}, "
                 f"resuming from step {resumed}")
            if jax.process_index() == 0:
                aside.mkdir(exist_ok=True)
                paths.move(self.directory / str(step), dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("damaged_checkpoints")
        self.manager.reload()

    def wait(self) -> None:
        self._finish()

    def close(self) -> None:
        try:
            self._finish()
        finally:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 - after a failed save, the failure is what gets reported
                if self._failed is None:
                    raise


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
    root = paths.as_path(os.path.expanduser(str(run)), resolve=True)
    folder = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    if not folder.is_dir():
        raise UserError(f"{root}: no such run directory; expected a run folder holding checkpoints/")
    mgr = ocp.CheckpointManager(folder, item_names=("state", "meta"))
    step = next((s for s in sorted(mgr.all_steps(), reverse=True) if damage(folder / str(s)) is None), None)
    mgr.close()
    if step is None:
        raise UserError(f"{folder}: no complete checkpoint; expected a finished (or checkpointed) run to start from")
    return folder / str(step) / "state", step


def load_params(run: str | Path, abstract_params: dict, take) -> tuple[dict, dict[str, tuple]]:
    """Parameters of another run's latest checkpoint, onto the shardings of `abstract_params`.

    `take(path, shape_here, shape_there)` decides per leaf: True restores it; False leaves it out (the
    caller keeps its own fresh value). Returns (restored leaves as a nested dict, {path: shape there}).
    Only the chosen leaves are read, so a task head or a new vocabulary does not need the whole state.
    A checkpoint of the other layer layout (`model.scan_layers`) is converted: layers are stacked or
    unstacked on the way (layout.py), so shapes and paths are compared in this model's layout.
    """
    state_dir, _ = latest_state_dir(run)
    try:
        there = ocp.PyTreeCheckpointHandler().metadata(state_dir)
        there = getattr(there, "tree", there)["params"]
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{state_dir}: checkpoint is unreadable ({type(e).__name__}); expected an xlplastic checkpoint") from None
    flat_there = {"/".join(map(str, k)): tuple(v.shape) for k, v in _flatten_dict(there).items()}
    flat_here = {"/".join(map(str, k)): v for k, v in _flatten_dict(abstract_params).items()}
    read, assemble = _layout_bridge(flat_here, flat_there)
    chosen: dict[str, Any] = {}
    for key, x in flat_here.items():
        if take(key, tuple(x.shape), read.shape(key)):
            chosen.update(read.items(key, x))
    if not chosen:
        return {}, read.shapes_here()
    item = {"params": unflatten_dict(chosen, sep="/")}
    restored = ocp.PyTreeCheckpointer().restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
        ),
    )
    got = {"/".join(map(str, k)): v for k, v in _flatten_dict(restored["params"]).items()}
    out = assemble(got, {k: x for k, x in flat_here.items() if read.covered(k, got)})
    return unflatten_dict(out, sep="/"), read.shapes_here()


class _LayoutView:
    """The checkpoint's leaves as seen from this model's layout: per key here, its shape there and the
    leaves to read (with the shardings to read them onto)."""

    def __init__(self, flat_there: dict[str, tuple], parts: dict[str, list[str]], mode: str):
        self.there, self.parts, self.mode = flat_there, parts, mode  # mode: same | stack | unstack
        self.stack_of = {p: (s, j) for s, ps in parts.items() for j, p in enumerate(ps)}

    def shape(self, key: str) -> tuple | None:
        if self.mode == "stack" and key in self.parts:
            ps = self.parts[key]
            return (len(ps), *self.there[ps[0]])
        if self.mode == "unstack" and key in self.stack_of:
            s, j = self.stack_of[key]
            return self.there[s][1:] if self.there[s][0] > j else None
        return self.there.get(key)

    def shapes_here(self) -> dict[str, tuple]:
        keys = set(self.there) - set(self.stack_of if self.mode == "stack" else self.parts) | set(
            self.parts if self.mode == "stack" else self.stack_of)
        return {k: s for k in keys if (s := self.shape(k)) is not None}

    def items(self, key: str, x) -> dict:
        """What to restore for leaf `key` of this model (abstract `x`), in the checkpoint's names."""
        sh = getattr(x, "sharding", None)
        if self.mode == "stack" and key in self.parts:
            one = _sub_sharding(sh, drop=True)
            return {p: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=one) for p in self.parts[key]}
        if self.mode == "unstack" and key in self.stack_of:
            s, _ = self.stack_of[key]
            return {s: jax.ShapeDtypeStruct(self.there[s], x.dtype, sharding=_sub_sharding(sh, drop=False))}
        return {key: x}

    def covered(self, key: str, got: dict) -> bool:
        if self.mode == "stack" and key in self.parts:
            return self.parts[key][0] in got
        if self.mode == "unstack" and key in self.stack_of:
            return self.stack_of[key][0] in got
        return key in got


def _sub_sharding(sh, *, drop: bool):
    """A NamedSharding without (drop) or with an extra unsplit leading axis (the stack's `layers` axis)."""
    from jax.sharding import NamedSharding, PartitionSpec

    if not isinstance(sh, NamedSharding):
        return sh
    spec = tuple(sh.spec)
    return NamedSharding(sh.mesh, PartitionSpec(*(spec[1:] if drop else (None, *spec))))


def _layout_bridge(flat_here: dict, flat_there: dict[str, tuple]):
    """(view, assemble): how to read a checkpoint of either layer layout into this model's layout, and how
    to turn what was read (in the checkpoint's names) into this model's leaves (stacked or sliced on device,
    onto this model's shardings)."""
    here, there = layout_of(flat_here), layout_of(flat_there)
    if "none" in (here, there) or here == there:
        return _LayoutView(flat_there, {}, "same"), lambda got, _: got
    if here == "scanned":  # an unrolled checkpoint into the scanned model
        view = _LayoutView(flat_there, stack_map(flat_there), "stack")
    else:  # a scanned checkpoint into the unrolled model
        view = _LayoutView(flat_there, stack_map(flat_here), "unstack")

    def assemble(got: dict, wanted: dict) -> dict:
        out = {k: v for k, v in got.items() if k in flat_here and k not in view.parts and k not in view.stack_of}
        for key, x in wanted.items():
            if view.mode == "stack" and key in view.parts:
                out[key] = jax.jit(lambda *a: jnp.stack(a), out_shardings=x.sharding)(*(got[p] for p in view.parts[key]))
            elif view.mode == "unstack" and key in view.stack_of:
                s, j = view.stack_of[key]
                out[key] = jax.jit(lambda a, j=j: a[j], out_shardings=x.sharding)(got[s])
        return out

    return view, assemble


def _flatten_dict(tree: dict, prefix: tuple = ()) -> dict[tuple, Any]:
    out: dict[tuple, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten_dict(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out
