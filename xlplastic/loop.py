"""The step loop, written once for every run (pretraining, language adaptation, task adaptation).

Steps run in jitted calls of K steps (`train.steps_per_call`): a call scans the same step function over
K stacked batches, so it computes exactly what K single calls would, minus per-call work (on CPU, XLA's
fresh temporary buffer per call; everywhere, K-1 dispatches). The host acts after some steps (hooks:
evaluation, probe, checkpoint, stop); each hook has one `due(step)` predicate, which is both where it
acts and where a call must end. Calls are K steps or 1, never in between, so at most two executables
exist and nothing compiles again after both have run once.

Two rules keep the loop fast: the metrics of a call are fetched only after the next call has been
dispatched (no host sync in the hot path), and nothing changes shapes or shardings. Before a host
action the pending metrics are read and checked: a NaN never reaches a checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from xlplastic import checkpoint as ckpt_lib
from xlplastic.errors import UserError
from xlplastic.runtime import StopRequest, log, warn
from xlplastic.sharding import put_global_batch


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the run stopped and kept its last good checkpoint."""


# ---- K-step calls


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


def check_finite(row: dict, last_ckpt: int | None) -> None:
    # The loss of step s is computed with the parameters *before* update s, while a checkpoint at s holds
    # them *after* it: a finite loss alone can let NaN parameters into a checkpoint, so the gradient and
    # the updated parameters' norms are checked too.
    bad = [k for k in ("loss", "grad_norm", "param_norm") if k in row and not math.isfinite(row[k])]
    if bad:
        kept = f"the last good checkpoint is step {last_ckpt}" if last_ckpt is not None else "no checkpoint was written"
        what = ", ".join(f"{k.replace('_', ' ')} is {row[k]}" for k in bad)
        raise TrainingDiverged(
            f"training diverged: {what} at step {row['step']}; stopped, {kept} "
            "(expected finite values: lower train.optimizer.lr or set train.optimizer.clip_norm)"
        )


# ---- hooks


def every(n: int, *, but: int | None = None) -> Callable[[int], bool]:
    """The usual `due`: every n-th step (never for n = 0), except step `but` (e.g. the last, which the
    caller handles after the loop)."""
    return lambda s: bool(n) and s % n == 0 and s != but


@dataclass
class Hook:
    """Host work after some steps: `act(step, state)` runs after every step where `due(step)` holds."""

    name: str
    due: Callable[[int], bool]
    act: Callable[[int, dict], None]


@dataclass
class Checkpoints:
    """The checkpoint hook: saves at `due` steps, and wherever the loop stops early."""

    ckpt: "ckpt_lib.Checkpointer"
    meta: dict
    due: Callable[[int], bool]
    last: int | None = None  # the newest step saved (or restored)

    def save(self, step: int, state: dict) -> None:
        if step != self.last:
            self.ckpt.save(step, state, self.meta)
            self.last = step


@dataclass
class RowLogger:
    """Per-step metric rows: timing added, written every `log_every` steps and at the last, shown on the
    progress bar."""

    metrics_log: object
    progress: object
    log_every: int
    last: int
    tokens_per_step: int | None = None
    step_times: list[float] = field(default_factory=list)

    def __call__(self, row: dict, dt: float) -> None:
        self.step_times.append(dt)
        row["step_time_s"] = dt
        shown = {"loss": row.get("loss")}
        if self.tokens_per_step:
            row["tokens_per_s"] = self.tokens_per_step / dt if dt > 0 else 0.0
            shown["tok/s"] = row["tokens_per_s"]
        if row["step"] % self.log_every == 0 or row["step"] == self.last:
            self.metrics_log.write(row)
        self.progress.update(row["step"], shown)


@dataclass
class LoopEnd:
    state: dict
    step: int  # the last step run (the start step when nothing ran)
    interrupted: bool
    signal: int | None


def train_loop(trainer, state: dict, *, start: int, total: int, steps_per_call: int,
               batch_of: Callable[[int], dict[str, np.ndarray]], global_batch: int,
               hooks: list[Hook], checkpoints: Checkpoints, rows: RowLogger,
               stop: StopRequest, stop_at: int | None = None) -> LoopEnd:
    """Runs steps start+1..total. `batch_of(t)` is this process's share of step t's batch (a pure function
    of the step, so a resumed run sees what an uninterrupted one would). Hooks act in list order, then the
    checkpoint; a signal (or `stop_at`, as a test's stand-in for one) saves and stops."""
    pending: tuple[int, int, dict] | None = None
    t_prev = time.perf_counter()

    def flush() -> None:
        """Fetches the pending call's metrics (by now computed) and logs one row per step."""
        nonlocal pending, t_prev
        if pending is None:
            return
        first, n, dev = pending
        pending = None
        host = jax.device_get(dev)
        now = time.perf_counter()
        dt, t_prev = (now - t_prev) / n, now
        for row in metric_rows(first, n, host):
            check_finite(row, checkpoints.last)
            rows(row, dt)

    def needs_host(s: int) -> bool:
        return s == stop_at or checkpoints.due(s) or any(h.due(s) for h in hooks)

    final, interrupted = start, False
    with jax.transfer_guard("disallow"):  # any implicit host<->device copy in the loop is a bug
        for first, s in windows(start, total, steps_per_call, needs_host):
            local = [batch_of(t) for t in range(first, s + 1)]
            # An explicit host->device copy; with several processes JAX routes it through a path the
            # "disallow" guard would reject, so it is allowed here and only here.
            with jax.transfer_guard_host_to_device("allow"):
                batch = put_batches(local, trainer.mesh, global_batch)
            state, dev = run_call(trainer, state, batch, s - first + 1)
            flush()  # the previous call's metrics, read while this one runs
            pending = (first, s - first + 1, dev)
            final = s
            halt = stop.requested(s) or s == stop_at
            due = [h for h in hooks if h.due(s)]
            save = checkpoints.due(s) or halt
            if due or save:
                flush()
            for h in due:
                h.act(s, state)
            if save:
                checkpoints.save(s, state)
            if halt:
                interrupted = True
                break
        flush()
    return LoopEnd(state, final, interrupted, stop.signal)


# ---- resume


def restore_or_init(ckpt: "ckpt_lib.Checkpointer", trainer, meta: dict, *, resume: bool,
                    fresh_params: Callable[[dict], dict], draw: bool = True) -> tuple[dict, int, bool]:
    """(state, start step, restored): the newest intact checkpoint of this run if there is one (a
    damaged newer one is set aside with one warning), else a fresh state whose params `fresh_params`
    may rewrite (assembly from other runs, re-drawn groups). With `draw=False` nothing is drawn first:
    `fresh_params(None)` makes the parameters (an imported HF model, loaded straight onto the mesh)."""
    if resume:
        abstract = ckpt_lib.abstract_like(jax.eval_shape(trainer.init), trainer.state_shardings)
        found = ckpt.restore_latest(abstract, meta, warn=warn)
        if found is not None:
            step, state = found
            log(f"resumed from {ckpt.directory / str(step)} (step {step})")
            return state, step, True
    if not draw:
        return trainer.init_from(fresh_params(None)), 0, False
    state = trainer.init()
    state["params"] = fresh_params(state["params"])
    return state, 0, False
