"""Bad input through the CLI as a user meets it, in a subprocess: exit status 2, exactly one stderr line
`xlplastic: error: ...` that names the key/file/step and what was expected, no traceback, and nothing
written. One case per exit path (config before JAX starts, data after it, a task's files, a refused
resume, a diverged run) plus the damaged-checkpoint fall-backs; the tables of every kind of mistake run
in-process in test_bad_inputs.py and test_bad_data_inputs.py."""

from __future__ import annotations

import json
import math
import re
import shutil

import jax
import numpy as np
import pytest

from cli_helpers import (
    QUIET,
    TINY,
    assert_one_line_error,
    cached_run,
    checkpoint_steps,
    cli_env,
    run_cli,
    run_cmd,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return cli_env(tmp_path_factory)


def _write(path, text: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


# ---------------------------------------------------------------------------------------------
# config (fails before JAX starts)


def test_unknown_key_in_file_names_the_file_and_suggests(tmp_path, env):
    cfg = _write(tmp_path / "c.yaml", f"base: {TINY}\ntrain:\n  optimiser: {{lr: 1.0e-3}}\n")
    line = assert_one_line_error(run_cli(run_cmd(cfg, tmp_path / "run"), env), str(cfg), "`train.optimiser`")
    assert "did you mean `train.optimizer`?" in line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# data (fails after JAX starts, before compiling; the run folder made for it is removed)


def _text_config(tmp_path, corpus_file: str):
    return _write(
        tmp_path / "text.yaml",
        f"base: {TINY}\ndata:\n  data_dir: {tmp_path}\n  corpora:\n    - {{language: xx, kind: text, path: {corpus_file}}}\n",
    )


def test_missing_corpus(tmp_path, env):
    cfg = _text_config(tmp_path, "absent.txt")
    assert_one_line_error(run_cli(run_cmd(cfg, tmp_path / "run"), env), str(tmp_path / "absent.txt"), "no such file")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# checkpoints: resume a finished tiny run (shared with test_distributed) with a changed or damaged folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    d = cached_run(tmp_path_factory, "tiny-30", QUIET, env)
    assert checkpoint_steps(d)[-1] == 30
    return d


@pytest.fixture
def run_copy(tmp_path, trained):
    d = tmp_path / "run"
    shutil.copytree(trained, d)
    return d


def test_resume_with_other_model_shape(run_copy, env):
    before = (run_copy / "config.yaml").read_text()
    done = run_cli(run_cmd(TINY, run_copy, *QUIET, "--set", "model.hidden_size=32"), env)
    assert_one_line_error(done, str(run_copy), "trained with another config", "model.hidden_size (64 -> 32)")
    # a refused resume leaves the folder describing what it holds
    assert (run_copy / "config.yaml").read_text() == before
    assert checkpoint_steps(run_copy) == [20, 30]


def test_resume_with_other_model_vocabulary(run_copy, env):
    (run_copy / "config.yaml").unlink()  # without its record the checkpoint's own metadata still refuses
    done = run_cli(run_cmd(TINY, run_copy, *QUIET, "--set", "model.vocab_size=512"), env)
    assert_one_line_error(done, str(run_copy / "checkpoints" / "30"), "vocabulary size 400", "512")


def test_resume_with_other_tokenizer_vocabulary(run_copy, env):
    (run_copy / "config.yaml").unlink()  # without its record the checkpoint's own metadata still refuses
    # Without a check the run would silently keep using its old 400-token tokenizer.json.
    done = run_cli(run_cmd(TINY, run_copy, *QUIET, "--set", "data.tokenizer.vocab_size=300"), env)
    assert_one_line_error(done, str(run_copy / "tokenizer.json"), "data.tokenizer.vocab_size=400", "asks for 300")


def test_resume_with_a_different_tokenizer_file(tmp_path, run_copy, env, trained):
    """A tokenizer of the same size but other merges: caught by the checkpoint's tokenizer fingerprint."""
    other = json.loads((trained / "tokenizer.json").read_text())
    merges = other["model"]["merges"]
    merges[0], merges[1] = merges[1], merges[0]
    _write(tmp_path / "other" / "tokenizer.json", json.dumps(other))
    (run_copy / "config.yaml").unlink()  # the record would refuse first (test_record.py); this is the fingerprint
    done = run_cli(
        run_cmd(TINY, run_copy, *QUIET, "--set", f"data.tokenizer.path={tmp_path / 'other' / 'tokenizer.json'}"), env
    )
    assert_one_line_error(done, str(run_copy / "checkpoints" / "30"), "different tokenizer")


def test_corrupt_checkpoint_arrays(run_copy, env):
    data = [p for p in (run_copy / "checkpoints" / "30" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data
    for p in data:
        p.write_bytes(p.read_bytes()[:10])  # truncated, as by a full disk
    _assert_falls_back(run_cli(run_cmd(TINY, run_copy, *QUIET), env), run_copy)


def test_garbled_checkpoint_metadata(run_copy, env):
    (run_copy / "checkpoints" / "30" / "meta" / "metadata").write_bytes(b"\x00garbage{")
    _assert_falls_back(run_cli(run_cmd(TINY, run_copy, *QUIET), env), run_copy)


def _assert_falls_back(done, run_dir):
    """A damaged newest checkpoint: one warning line naming it, then the run resumes from step 20."""
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [l for l in done.stderr.splitlines() if l.startswith("xlplastic: warning:")]
    assert len(warnings) == 1 and str(run_dir / "checkpoints" / "30") in warnings[0], done.stderr[-3000:]
    assert "resuming from step 20" in warnings[0] and "Traceback" not in done.stderr
    assert "done: step 30" in done.stdout


# ---------------------------------------------------------------------------------------------
# NaN


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, env):
    """lr=1e6 makes the tiny run blow up within a few steps; a checkpoint every step means every step
    that is still good has one, so the bug of saving a step whose update already produced NaN shows."""
    d = tmp_path / "run"
    args = [*QUIET, "--set", "train.optimizer.lr=1.0e6", "--set", "checkpoint.every=1", "--set", "checkpoint.keep=100"]
    done = run_cli(run_cmd(TINY, d, *args), env)
    line = assert_one_line_error(done, "training diverged", "train.optimizer.lr")
    m = re.search(r"at step (\d+); stopped, the last good checkpoint is step (\d+)", line)
    assert m, line
    bad, good = int(m.group(1)), int(m.group(2))
    assert 1 < bad < 30
    steps = checkpoint_steps(d)
    assert steps and steps[-1] == good == bad - 1 and all(s < bad for s in steps)
    assert not list((d / "checkpoints").glob("*tmp*"))
    assert not (d / "results.json").exists()
    # the last good checkpoint restores, with finite parameters and optimizer state
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager(d / "checkpoints", item_names=("state", "meta"))
    state = mgr.restore(good, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    mgr.close()
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    assert int(state["step"]) == good
    assert all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f")
    # and everything logged is finite (the diverged step is reported, not logged)
    for r in (json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()):
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float)), r


# ---------------------------------------------------------------------------------------------
# task data (a task run reads and checks its files before building a model)


def _task_config(tmp_path, train: str, test: str, kind: str = "classification"):
    return _write(
        tmp_path / "task.yaml",
        f"base: {TINY}\ndata:\n  data_dir: {tmp_path}\n"
        f"task: {{name: t, kind: {kind}, train: {train}, test: {{xx: {test}}}, seq_len: 32}}\n",
    )


def test_malformed_conllu_names_file_and_line(tmp_path, env):
    _write(tmp_path / "train.conllu", "1\tA\t_\tDET\t_\t_\t0\troot\t_\t_\n2\tdog\t_\tNOUN\n\n")
    cfg = _task_config(tmp_path, "train.conllu", "train.conllu", kind="pos")
    assert_one_line_error(run_cli(run_cmd(cfg, tmp_path / "run"), env), f"{tmp_path / 'train.conllu'}:2")
    assert not (tmp_path / "run").exists()
