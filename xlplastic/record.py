"""A run directory is a record: its `config.yaml` is the config that trained the checkpoints beside it.

A rerun into a run that has trained (checkpoints or results) must ask for the same computation. Keys
that only change how a run is watched or saved are free to change (`NEUTRAL`); `--allow-change KEY`
accepts the few that extend a run (`EXTENSIONS`), and records the change in `changes.jsonl`. Anything
else (seed, batch, LR, schedule, model, data, steps) is refused with one line naming the keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from xlplastic.errors import UserError

CONFIG_FILE = "config.yaml"

# Prefixes of keys that do not change what is computed.
NEUTRAL = (
    "name",
    "train.progress",
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.steps_per_call",  # bit-identical by construction (tests/test_steps_per_call.py)
    "checkpoint.every",
    "checkpoint.keep",
    "checkpoint.async_save",
    "checkpoint.resume",
    "data.cache_dir",
    "data.data_dir",  # where the same files are found (a moved dataset); the tokenizer fingerprint still guards content
    "analysis",
    "mesh",  # 1 vs 8 devices give the same numbers (tests/test_sharding.py)
)

# Keys a user may change on purpose with `--allow-change KEY`: a longer run. Changing steps moves a
# decaying schedule, so the steps already taken followed another schedule; the change is recorded.
EXTENSIONS = ("train.steps",)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    return {prefix: tree}


def _neutral(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in NEUTRAL)


def has_trained(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    return (run_dir / "results.json").is_file() or (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()))


def changed_keys(old: dict, new: dict) -> list[str]:
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>") and not _neutral(k))


def check_rerun(run_dir: Path, new_text: str, allow_change: tuple[str, ...] = ()) -> list[str]:
    """Refuses a rerun whose resolved config differs from the recorded one in what it computes; returns
    the allowed changed keys (empty when the rerun is the same run)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file() or not has_trained(run_dir):
        return []
    bad_allow = [k for k in allow_change if k not in EXTENSIONS]
    if bad_allow:
        raise UserError(f"--allow-change {bad_allow[0]}: not a safe extension; expected one of {', '.join(EXTENSIONS)}")
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: the run's recorded config is unreadable ({type(e).__name__}); expected the "
                        "config.yaml xlplastic wrote") from None
    keys = changed_keys(old, yaml.safe_load(new_text) or {})
    refused = [k for k in keys if k not in allow_change]
    if refused:
        a, b = flatten(old), flatten(yaml.safe_load(new_text) or {})
        shown = ", ".join(f"{k} ({a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r})" for k in refused[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        hint = (f"pass --allow-change {refused[0]} to extend it on purpose, or " if all(k in EXTENSIONS for k in refused)
                else "")
        raise UserError(f"{run_dir}: this run was trained with another config: {shown}{more}; expected the same "
                        f"config to resume it ({hint}use a new --run-dir)")
    return keys


def write_config(run_dir: Path, text: str, changed: list[str], start: int) -> None:
    """Writes config.yaml (atomically); an allowed change is appended to changes.jsonl with the step it
    took effect at."""
    from xlplastic.paths import append_text
    from xlplastic.runtime import write_text

    if changed:
        append_text(run_dir / "changes.jsonl", json.dumps({"from_step": start, "keys": changed}) + "\n")
    write_text(run_dir / CONFIG_FILE, text)
