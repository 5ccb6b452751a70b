"""Two `jax.distributed` processes on localhost CPU (gloo collectives, one CPU device each) train the tiny
config together: a preemption notice to ONE of them stops both at the same step with a checkpoint both
wrote; rerunning resumes in both; the result agrees with the one-process run; process 0 alone writes
the outputs. One scenario, two launches: multi-process start-up dominates its cost."""

from __future__ import annotations

import json
import signal
import time

import pytest

from cli_helpers import (
    HANG, QUIET, TINY, Background, cached_run, checkpoint_steps, cli_env, free_port, run_cli, run_cmd, train_rows,
    wait_until,
)

pytestmark = pytest.mark.slow

STEPS = 30  # configs/tiny.yaml as is: checkpoints every 10 steps, keep 2


def _launch(tmp_path, env, run_dir, name, config=TINY, flags=QUIET):
    port = free_port()
    return [
        Background(run_cmd(config, run_dir, *flags, "--coordinator", f"localhost:{port}", "--num-processes", "2",
                           "--process-id", str(i)), env, tmp_path / "logs", f"{name}-{i}")
        for i in range(2)
    ]


def _preempt_one_of_two(procs, run_dir, after_rows=12):
    """SIGTERM to process 1 only, while process 0 is frozen mid-run (so the run cannot finish first)."""
    try:
        wait_until(lambda: len(train_rows(run_dir)) >= after_rows, procs[0].proc, HANG, f"step {after_rows}")
        procs[0].proc.send_signal(signal.SIGSTOP)
        procs[1].proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        procs[0].proc.send_signal(signal.SIGCONT)
    except BaseException:
        for p in procs:
            p.kill()
        raise


def _wait_all(procs, timeout=HANG):
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()  # no-op once exited; never leave a process waiting on a dead peer


def _rel_close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol * max(abs(x), abs(y)) for x, y in zip(a, b))


def test_two_processes_preempt_resume_and_agree_with_one(tmp_path_factory, tmp_path):
    env = cli_env(tmp_path_factory)
    single = cached_run(tmp_path_factory, "tiny-30", QUIET, env)  # shared with test_errors
    ref = [r["loss"] for r in train_rows(single)]
    assert len(ref) == STEPS
    d = tmp_path / "run"

    # 1) A preemption notice to process 1 only, after step 12.
    procs = _launch(tmp_path, env, d, "first")
    _preempt_one_of_two(procs, d)
    outs = _wait_all(procs)
    for i, o in enumerate(outs):
        assert o.returncode == 143, f"process {i} exit {o.returncode}:\n{o.stdout[-2000:]}\n{o.stderr[-4000:]}"
        assert f"xlplastic: process {i}/2, 1 local / 2 global devices (cpu)" in o.stdout, o.stdout
    assert "mesh: data=2 x fsdp=1 x tensor=1" in outs[0].stdout and "stopped at step" in outs[0].stdout
    assert "mesh:" not in outs[1].stdout  # process 1 trains but reports nothing
    steps = checkpoint_steps(d)
    # the periodic checkpoint before the stop (every 10; keep=2), and the one both processes agreed to stop at
    # (how far they get past step 12 before the sync point sees the signal depends on the machine's speed)
    assert len(steps) == 2 and steps[0] % 10 == 0 and steps[0] < steps[1] and 12 <= steps[1] < STEPS, steps
    state = d / "checkpoints" / str(steps[1]) / "state"
    assert (state / "ocdbt.process_0").is_dir() and (state / "ocdbt.process_1").is_dir()  # both wrote it

    # 2) The same commands again: both resume from the agreed step and finish.
    outs = _wait_all(_launch(tmp_path, env, d, "resumed"))
    for i, o in enumerate(outs):
        assert o.returncode == 0, f"process {i}:\n{o.stdout[-2000:]}\n{o.stderr[-4000:]}"
    assert f"(step {steps[1]})" in outs[0].stdout and "done: step 30" in outs[0].stdout
    assert "done:" not in outs[1].stdout

    rows = train_rows(d)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # one writer, each step once
    assert _rel_close([r["loss"] for r in rows], ref), list(zip([r["loss"] for r in rows], ref))
    results = json.loads((d / "results.json").read_text())
    assert results["final"]["processes"] == 2 and results["final"]["devices"] == 2
    ref_eval = json.loads((single / "results.json").read_text())["final"]["eval_loss"]
    assert _rel_close([results["final"]["eval_loss"]], [ref_eval])
    assert (d / "report.md").exists()


def _task_config(tmp_path) -> "Path":
    """A POS task run (fresh encoder + head) on a small generated lab: 40 steps, checkpoints every 10."""
    from xlplastic.data.lab import write_lab

    lab = tmp_path / "lab"
    write_lab({"grammar": "bigram", "words": 100, "sentences": 600, "test_sentences": 50, "seed": 0,
               "languages": [{"name": "syn"}]}, lab)
    cfg = tmp_path / "task.yaml"
    cfg.write_text(f"""
base: {TINY}
name: tiny_task
data:
  data_dir: {lab}
  corpora: [{{language: syn, kind: text, path: syn.train.txt}}]
train: {{steps: 40, log_every: 1, progress: false, optimizer: {{lr: 1.0e-3}}}}
task: {{name: pos, kind: pos, train: syn.pos.train.conllu, test: {{syn: syn.pos.test.conllu}}, seq_len: 32,
        max_train_examples: 400}}
""", encoding="utf-8")
    return cfg


def test_two_process_task_run_stops_at_the_agreed_step(tmp_path_factory, tmp_path):
    """The task loop is the MLM loop: SIGTERM to one process stops both at one agreed step (no
    collective-save deadlock: every wait has a timeout), and the resumed run equals the 1-process one."""
    env = cli_env(tmp_path_factory)
    cfg = _task_config(tmp_path)
    single = tmp_path / "single"
    done = run_cli(run_cmd(cfg, single), env, timeout=HANG)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = [r["loss"] for r in train_rows(single)]
    assert len(ref) == 40

    d = tmp_path / "two"

    procs = _launch(tmp_path, env, d, "first", cfg, flags=())
    _preempt_one_of_two(procs, d)
    outs = _wait_all(procs, timeout=HANG)
    for i, o in enumerate(outs):
        assert o.returncode == 143, f"process {i} exit {o.returncode}:\n{o.stdout[-2000:]}\n{o.stderr[-4000:]}"
    steps = checkpoint_steps(d)
    assert steps and 12 <= steps[-1] < 40, steps
    state = d / "checkpoints" / str(steps[-1]) / "state"
    assert (state / "ocdbt.process_0").is_dir() and (state / "ocdbt.process_1").is_dir()  # both wrote it

    outs = _wait_all(_launch(tmp_path, env, d, "resumed", cfg, flags=()), timeout=HANG)
    for i, o in enumerate(outs):
        assert o.returncode == 0, f"process {i}:\n{o.stdout[-2000:]}\n{o.stderr[-4000:]}"
    rows = train_rows(d)
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert _rel_close([r["loss"] for r in rows], ref), list(zip([r["loss"] for r in rows], ref))
    two = json.loads((d / "results.json").read_text())["scores"]["syn"]["accuracy"]
    one = json.loads((single / "results.json").read_text())["scores"]["syn"]["accuracy"]
    assert abs(two - one) < 1e-6
