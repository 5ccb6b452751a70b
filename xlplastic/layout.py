"""The two layouts of the shared transformer layers: unrolled (`layer_3/attention/qkv_kernel`, one leaf per
layer) and scanned (`layers/attention/qkv_kernel`, the same leaves stacked on a leading `layers` axis,
`model.scan_layers`).

Everything that reads or writes parameters by name in another layout (checkpoints of another run, HF
weights, HF export) goes through `stack_map`: which unrolled leaves make up each stacked one. Language-
specific bottom layers (`lang_<l>/layer_<i>`, `model.separate.layers`) are never stacked: the scanned stack
covers the shared layers only.
"""

from __future__ import annotations

import re
from typing import Iterable

STACK = "layers"  # the scanned stack's name in the parameter tree, and its logical axis
_LAYER = re.compile(r"^layer_(\d+)/(.+)$")


def is_stacked(key: str) -> bool:
    return key.startswith(STACK + "/")


def stack_map(unrolled_keys: Iterable[str]) -> dict[str, list[str]]:
    """{'layers/x': ['layer_i/x' for each shared layer i in order]} for the shared-layer keys among
    `unrolled_keys` (top-level `layer_<i>/...` paths); other keys are not part of any stack."""
    found: dict[str, dict[int, str]] = {}
    for k in unrolled_keys:
        if (m := _LAYER.match(k)) is not None:
            found.setdefault(f"{STACK}/{m.group(2)}", {})[int(m.group(1))] = k
    return {s: [by_i[i] for i in sorted(by_i)] for s, by_i in found.items()}


def unrolled_keys(stacked_key: str, first: int, n: int) -> list[str]:
    """The per-layer keys of a stacked key whose stack holds layers first .. first + n - 1."""
    rest = stacked_key[len(STACK) + 1:]
    return [f"layer_{first + j}/{rest}" for j in range(n)]


def layout_of(keys: Iterable[str]) -> str:
    """'scanned', 'unrolled' or 'none' (no shared layers: every layer language-specific)."""
    keys = list(keys)
    if any(is_stacked(k) for k in keys):
        return "scanned"
    return "unrolled" if any(_LAYER.match(k) for k in keys) else "none"


def unrolled_positions(keys: list[str], stack_sizes: dict[str, int]) -> list[list[int]]:
    """For the leaves of a flattened parameter tree (`keys` in jax's flattening order), the position(s) each
    has in the unrolled model's flattening: one for a plain leaf, one per layer for a stacked leaf
    (`stack_sizes[key]` layers). Per-leaf random streams folded from these positions (forgetting's
    re-draws) are then the same in both layouts. Relies on jax flattening dicts by sorted keys, where
    `layer_<i>` sorts just before `layers`: the stack sits where the unrolled layers would."""
    stacked = [k for k in keys if is_stacked(k)]
    n = len(stacked)
    out, pos, j = [], 0, 0
    for k in keys:
        if is_stacked(k):
            out.append([pos + layer * n + j for layer in range(stack_sizes[k])])
            j += 1
            if j == n:
                pos += n * stack_sizes[k]
        else:
            out.append([pos])
            pos += 1
    return out
