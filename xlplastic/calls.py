"""Several train steps per jitted call (`train.steps_per_call`), shared by the MLM and task loops.

A call of K steps scans the same step function over K stacked batches, so it computes exactly what K
single calls would; it saves the per-call work around the maths (on CPU, XLA's runtime maps a fresh
temporary buffer for every call and the kernel zero-fills each page of it again; everywhere, one
dispatch instead of K). The loop needs the host at some steps (evaluation, checkpoint, probe, stop):
a call ends there. Calls are K steps or 1 step, never in between, so at most two executables exist
and nothing compiles again after both have run once.
"""

from __future__ import annotations

from typing import Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from xlplastic.sharding import put_global_batch


def call_length(step: int, last: int, k: int, needs_host: Callable[[int], bool]) -> int:
    """How many steps the call starting at `step` runs: k if steps step..step+k-1 exist (<= `last`) and
    none but the final one needs the host afterwards, else 1."""
    if k <= 1 or step + k - 1 > last:
        return 1
    if any(needs_host(s) for s in range(step, step + k - 1)):
        return 1
    return k


def windows(start: int, last: int, k: int, needs_host: Callable[[int], bool]) -> Iterator[tuple[int, int]]:
    """The (first, last) steps of each call after step `start` up to step `last`, by `call_length`."""
    s = start
    while s < last:
        first = s + 1
        s = first + call_length(first, last, k, needs_host) - 1
        yield first, s


def put_batches(local: list[dict[str, np.ndarray]], mesh: Mesh, global_batch: int) -> dict[str, jax.Array]:
    """One step's batch as is; several steps' batches stacked on a new leading axis."""
    if len(local) == 1:
        return put_global_batch(local[0], mesh, global_batch)
    stacked = {k: np.stack([b[k] for b in local]) for k in local[0]}
    return put_global_batch(stacked, mesh, global_batch, leading=1)


def run_call(trainer, state: dict, batch: dict, n: int):
    """Dispatches n steps (the single-step executable for n = 1); returns (state, device metrics)."""
    return trainer.step(state, batch) if n == 1 else trainer.steps(state, batch)


def metric_rows(first_step: int, n: int, host: dict) -> list[dict]:
    """Per-step rows from a call's fetched metrics (scalars for one step, [n] arrays for several)."""
    if n == 1:
        return [{"step": first_step, **{k: float(v) for k, v in host.items()}}]
    return [{"step": first_step + j, **{k: float(v[j]) for k, v in host.items()}} for j in range(n)]
