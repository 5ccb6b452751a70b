"""Preemption and resume: an interrupted run, rerun with the same command, reproduces the uninterrupted
run's loss sequence bit for bit (CPU), with each step logged exactly once.

The CLI runs are real subprocesses (`python -m xlplastic.cli run configs/tiny.yaml ...`) that get SIGTERM
or SIGKILL while training; the comparison is on `metrics.jsonl`, as a user would see it.
"""

from __future__ import annotations

import json
import re
import signal

import jax
import numpy as np
import pytest

from cli_helpers import (
    HANG,
    QUIET,
    TINY,
    Background,
    cached_run,
    checkpoint_entries,
    checkpoint_steps,
    cli_env,
    last_step,
    losses,
    read_metrics,
    run_cli,
    run_cmd,
    train_rows,
    wait_until,
)

STEPS = 60
# 60 steps with a checkpoint every 10: long enough to interrupt reliably, short enough for CI.
ARGS = QUIET + ("--set", f"train.steps={STEPS}", "--set", "checkpoint.every=10")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return cli_env(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """The uninterrupted run's loss per step 1..STEPS."""
    d = cached_run(tmp_path_factory, "tiny-60", ARGS, env)
    rows = train_rows(d)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    return [r["loss"] for r in rows]


def _assert_same_run(run_dir, reference):
    rows = train_rows(run_dir)
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, STEPS + 1)), f"each step once, in order; got {steps}"
    assert [r["loss"] for r in rows] == reference  # bitwise: JSON round-trips floats exactly
    results = json.loads((run_dir / "results.json").read_text())
    assert results["losses"] == reference
    assert results["final"]["step"] == STEPS


def test_sigterm_saves_at_the_current_step_exits_143_and_resumes_exactly(tmp_path, env, reference):
    d = tmp_path / "run"
    cmd = run_cmd(TINY, d, *ARGS)
    bg = Background(cmd, env, tmp_path, "first")
    # early (past the periodic checkpoint at 10), so the run is far from done when the signal lands
    wait_until(lambda: last_step(d) >= 13, bg.proc, timeout=HANG, what="step 13 in metrics.jsonl")
    bg.proc.send_signal(signal.SIGTERM)
    first = bg.wait(timeout=HANG)

    assert first.returncode == 128 + signal.SIGTERM == 143, first.stderr[-3000:]
    m = re.search(r"stopped at step (\d+) \(signal 15\)", first.stdout)
    assert m, first.stdout
    stopped = int(m.group(1))
    assert 13 <= stopped < STEPS
    # the checkpoint is of the step it stopped at (not just the last periodic one), and that step is logged
    assert checkpoint_steps(d)[-1] == stopped
    assert last_step(d) == stopped
    assert not (d / "results.json").exists()

    second = run_cli(cmd, env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"(step {stopped})" in second.stdout and "resumed from" in second.stdout
    _assert_same_run(d, reference)


def _kill_between_checkpoints(tmp_path, env, attempt: int):
    """Starts a run, freezes it (SIGSTOP) once step >= 13 is logged, and SIGKILLs it if it stands between
    the checkpoints at 10 and 20; returns (run dir, command, logged step) or None if the window was missed."""
    d = tmp_path / f"run{attempt}"
    # Synchronous saves: checkpoint 10 is complete before step 11 starts, so "step >= 13 logged" implies
    # it exists. (An async save can still be in flight several steps later; numerics are the same.)
    cmd = run_cmd(TINY, d, *ARGS, "--set", "checkpoint.async_save=false")
    bg = Background(cmd, env, tmp_path, f"first{attempt}")
    try:
        wait_until(lambda: last_step(d) >= 13, bg.proc, timeout=HANG, what="step 13 in metrics.jsonl")
        bg.proc.send_signal(signal.SIGSTOP)
        logged, entries = last_step(d), checkpoint_entries(d)
    finally:
        bg.kill()
    first = bg.wait(timeout=HANG)
    assert first.returncode == -signal.SIGKILL
    return (d, cmd, logged) if entries == ["10"] and 13 <= logged < 20 else None


def test_sigkill_after_a_checkpoint_resumes_from_it_and_rewrites_metrics(tmp_path, env, reference):
    for attempt in range(3):  # the window is ~7 steps of ~10 ms: a loaded machine can miss it
        hit = _kill_between_checkpoints(tmp_path, env, attempt)
        if hit:
            break
    else:
        pytest.fail("never managed to kill the run between the checkpoints at steps 10 and 20")
    d, cmd, logged = hit
    assert checkpoint_steps(d) == [10]
    assert last_step(d) == logged > 10  # metrics.jsonl is ahead of the checkpoint

    second = run_cli(cmd, env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.search(r"resumed from \S+ \(step 10\)", second.stdout), second.stdout
    _assert_same_run(d, reference)
    # the steps 11..logged of the killed run were replaced, not duplicated (also rows without `loss`)
    steps = [r["step"] for r in read_metrics(d) if "loss" in r]
    assert len(steps) == len(set(steps))


def test_in_process_stop_at_then_resume_matches_uninterrupted(tmp_path):
    from xlplastic.config import load_config
    from xlplastic.run import run

    cfg = load_config(TINY, ["train.progress=false", "train.steps=20", "checkpoint.every=5"])
    one = jax.devices()[:1]  # the same 1-device mesh whatever XLA_FLAGS the test session uses

    whole = run(cfg, tmp_path / "whole", devices=one)
    assert not whole.interrupted and whole.final_step == 20

    part = run(cfg, tmp_path / "resumed", stop_at=12, devices=one)
    assert part.interrupted and part.final_step == 12
    assert checkpoint_steps(tmp_path / "resumed")[-1] == 12
    assert losses(tmp_path / "resumed") == whole.results["losses"][:12]
    rest = run(cfg, tmp_path / "resumed", devices=one)
    assert not rest.interrupted and rest.final_step == 20
    assert rest.results["losses"] == whole.results["losses"]
    assert rest.results["final"]["eval_loss"] == whole.results["final"]["eval_loss"]
    assert [r["step"] for r in train_rows(tmp_path / "resumed")] == list(range(1, 21))


def test_sigkill_at_ten_random_points_including_mid_save(tmp_path, env, reference):
    """One run SIGKILLed ten times, each at a random step after the last resume point (checkpoints every
    3 steps, saved asynchronously, so several kills land while a save is in flight), resumed each time by
    the same command: the finished run equals the uninterrupted one bit for bit, each step logged once."""
    rng = np.random.default_rng(0)
    d = tmp_path / "run"
    cmd = run_cmd(TINY, d, *QUIET, "--set", f"train.steps={STEPS}", "--set", "checkpoint.every=3",
                  "--set", "checkpoint.keep=2", "--set", "train.log_every=1")
    kills = 0
    for attempt in range(10):
        start = max(checkpoint_steps(d), default=0)
        target = min(STEPS - 1, start + int(rng.integers(1, 9)))
        bg = Background(cmd, env, tmp_path, f"kill{attempt}")
        try:
            wait_until(lambda: last_step(d) >= target or bg.proc.poll() is not None, bg.proc, timeout=HANG,
                       what=f"step {target}")
        except AssertionError:
            pass  # the run ended on its own (it got to the end): nothing to kill
        finally:
            bg.kill()
        done = bg.wait(timeout=HANG)
        kills += done.returncode == -signal.SIGKILL
        if (d / "results.json").exists():
            break
    assert kills >= 8, kills
    if not (d / "results.json").exists():
        last = run_cli(cmd, env, timeout=HANG)
        assert last.returncode == 0, last.stderr[-3000:]
    _assert_same_run(d, reference)
