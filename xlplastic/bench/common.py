"""Options shared by the benchmarks: the model shape both sides are built with."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from xlplastic.errors import UserError


def add_model_args(p: argparse.ArgumentParser, batch_help: str | None = None) -> None:
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=None, help="FFN width (default 4 x hidden)")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--max-positions", type=int, default=514)
    p.add_argument("--batch", type=int, default=16, help=batch_help)


def host_memory_bytes() -> int | None:
    """Physical memory of this machine (what a NumPy peer's need is compared with), or None if unknown."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_json_path(path: str | None) -> None:
    """Fails fast (UserError, before a benchmark runs) when `--json PATH` could not be written at the end:
    PATH is a folder, or a part of its parent path is not a folder, or the folder is not writable.
    Missing folders are fine: `write_json` creates them."""
    if not path:
        return
    out = Path(path).expanduser()
    if out.is_dir():
        raise UserError(f"--json {path}: is a directory; expected a file path to write the figures to")
    if out.exists() and not os.access(out, os.W_OK):
        raise UserError(f"--json {path}: file is not writable; expected a path this user may write")
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:  # the nearest folder that exists gets the new ones
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--json {path}: {parent} is not a directory; expected the file's parent to be a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--json {path}: folder {parent} is not writable; expected a path this user may write")


def write_json(path: str | None, result: dict) -> None:
    """Writes the figures (when --json was given) and says where."""
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def model_config(args: argparse.Namespace, **overrides):
    """The xlplastic `ModelConfig` for the shape options above (the same model every benchmark builds)."""
    from xlplastic.config import ModelConfig

    return ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        mlp_dim=args.ffn,
        max_positions=args.max_positions,
        **overrides,
    )


def shape_record(args: argparse.Namespace) -> dict:
    """The model shape as recorded in a benchmark's JSON."""
    keys = ("layers", "hidden", "heads", "ffn", "vocab", "seq", "max_positions", "batch")
    return {k: getattr(args, k) for k in keys}
