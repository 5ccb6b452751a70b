"""Two `jax.distributed` processes on localhost CPU (gloo collectives, one CPU device each) train the tiny
config together, agree with the one-process run, write outputs from process 0 only, and save and
restore checkpoints that both processes take part in."""

from __future__ import annotations

import json
import shutil

import pytest

from cli_helpers import QUIET, TINY, Background, cached_run, checkpoint_steps, cli_env, free_port, run_cmd, train_rows

pytestmark = pytest.mark.slow

STEPS = 30  # configs/tiny.yaml as is: checkpoints at 10, 20, 30, keep 2


def _launch(tmp_path, env, run_dir, name):
    port = free_port()
    procs = []
    for i in range(2):
        cmd = run_cmd(TINY, run_dir, *QUIET, "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i))
        procs.append(Background(cmd, env, tmp_path / "logs", f"{name}-{i}"))
    try:
        return [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()  # no-op once exited; never leave a process waiting on a dead peer


def _rel_close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol * max(abs(x), abs(y)) for x, y in zip(a, b))


def test_two_processes_agree_with_one_and_checkpoint_together(tmp_path_factory, tmp_path):
    env = cli_env(tmp_path_factory)
    single = cached_run(tmp_path_factory, "tiny-30", QUIET, env)  # shared with test_errors
    ref = [r["loss"] for r in train_rows(single)]
    assert len(ref) == STEPS

    d = tmp_path / "run"
    outs = _launch(tmp_path, env, d, "first")
    for i, o in enumerate(outs):
        assert o.returncode == 0, f"process {i}:\n{o.stdout[-2000:]}\n{o.stderr[-4000:]}"
        assert f"xlplastic: process {i}/2, 1 local / 2 global devices (cpu)" in o.stdout, o.stdout
    assert "mesh: data=2 x fsdp=1 x tensor=1" in outs[0].stdout
    assert "done: step 30" in outs[0].stdout
    # process 1 trains but reports nothing (one set of outputs, written by process 0 only)
    assert "done:" not in outs[1].stdout and "mesh:" not in outs[1].stdout

    rows = train_rows(d)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # one writer: each step once
    two = [r["loss"] for r in rows]
    assert _rel_close(two, ref), list(zip(two, ref))
    results = json.loads((d / "results.json").read_text())
    assert results["final"]["processes"] == 2 and results["final"]["devices"] == 2
    assert _rel_close([results["final"]["eval_loss"]], [json.loads((single / "results.json").read_text())["final"]["eval_loss"]])
    assert (d / "report.md").exists()

    # checkpoints were written by both processes (each writes its own OCDBT shard folder)
    assert checkpoint_steps(d) == [20, 30]
    state = d / "checkpoints" / "30" / "state"
    assert (state / "ocdbt.process_0").is_dir() and (state / "ocdbt.process_1").is_dir()

    # ... and restore in both: drop step 30, rerun the same commands, resume at 20, finish identically
    shutil.rmtree(d / "checkpoints" / "30")
    (d / "results.json").unlink()
    outs = _launch(tmp_path, env, d, "resumed")
    for i, o in enumerate(outs):
        assert o.returncode == 0, f"process {i}:\n{o.stdout[-2000:]}\n{o.stderr[-4000:]}"
    assert "(step 20)" in outs[0].stdout and "resumed from" in outs[0].stdout
    rows = train_rows(d)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == two  # same two-process program from the same state: bitwise
    assert checkpoint_steps(d) == [20, 30]


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path_factory, tmp_path):
    """A preemption notice reaching one host only: JAX's preemption sync point makes every process stop
    and save at the same step (otherwise the collective save would deadlock), and the rerun resumes."""
    import signal

    from cli_helpers import wait_until

    env = cli_env(tmp_path_factory)
    args = (*QUIET, "--set", "train.steps=200", "--set", "checkpoint.every=0")
    ref = [r["loss"] for r in train_rows(cached_run(tmp_path_factory, "tiny-200", args, env))]
    d = tmp_path / "run"

    def launch(name):
        port = free_port()
        return [
            Background(run_cmd(TINY, d, *args, "--coordinator", f"localhost:{port}", "--num-processes", "2",
                               "--process-id", str(i)), env, tmp_path / "logs", f"{name}{i}")
            for i in range(2)
        ]

    procs = launch("p")
    try:
        wait_until(lambda: len(train_rows(d)) >= 5, procs[0].proc, 180, "step 5")
        procs[1].proc.send_signal(signal.SIGTERM)  # process 1 only
        outs = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [o.returncode for o in outs] == [143, 143], [o.stderr[-2000:] for o in outs]
    stopped = checkpoint_steps(d)
    assert len(stopped) == 1 and 5 <= stopped[0] < 200, stopped
    assert "stopped at step" in outs[0].stdout

    procs = launch("r")
    try:
        outs = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(o.returncode == 0 for o in outs), [o.stderr[-2000:] for o in outs]
    assert f"(step {stopped[0]})" in outs[0].stdout
    rows = train_rows(d)
    assert [r["step"] for r in rows] == list(range(1, 201))
    assert _rel_close([r["loss"] for r in rows], ref)
