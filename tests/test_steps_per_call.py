"""`train.steps_per_call`: K steps per jitted call compute exactly what K single calls do, on a sharded
mesh, across evaluation/checkpoint boundaries, and across a stop + resume; only two executables exist."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from cli_helpers import TINY, checkpoint_steps, losses, train_rows

from xlplastic.loop import call_length, windows
from xlplastic.config import load_config
from xlplastic.run import run


def test_call_length_ends_calls_where_the_host_acts():
    at = {5, 6}  # e.g. eval at 5, checkpoint at 6
    plan = [last - first + 1 for first, last in windows(0, 14, 4, lambda t: t in at)]
    # 1-4 in one call; 5 and 6 each end a call; 7-10 together; 11-14 together (14 is the last step)
    assert plan == [4, 1, 1, 4, 4]
    assert call_length(12, 14, 4, lambda t: False) == 1  # not enough steps left for a full call
    assert call_length(3, 14, 1, lambda t: False) == 1


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("spc")
    over = ["train.progress=false", "train.steps=14", "train.eval_every=5", "checkpoint.every=6",
            "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "model.dropout=0.1", "model.attention_dropout=0.1",
            f"data.cache_dir={d / 'cache'}"]
    eight = jax.devices()[:8]
    one = run(load_config(TINY, over), d / "k1", devices=eight)
    four = run(load_config(TINY, over + ["train.steps_per_call=4"]), d / "k4", devices=eight)
    return d, one, four


def test_steps_per_call_is_bit_identical_on_a_sharded_mesh(sharded_runs):
    d, one, four = sharded_runs
    assert four.results["losses"] == one.results["losses"] and len(one.results["losses"]) == 14
    assert four.results["final"]["eval_loss"] == one.results["final"]["eval_loss"]
    assert [r["step"] for r in train_rows(d / "k4")] == list(range(1, 15))  # still one row per step
    assert [r["grad_norm"] for r in train_rows(d / "k4")] == [r["grad_norm"] for r in train_rows(d / "k1")]
    assert checkpoint_steps(d / "k4") == checkpoint_steps(d / "k1") == [12, 14]


def test_stop_inside_a_call_window_then_resume(sharded_runs, tmp_path):
    """stop_at=7 ends a call at 7 (calls 1-4, 5, 6, 7); the resumed run continues with calls of K."""
    d, one, _ = sharded_runs
    cfg = load_config(TINY, ["train.progress=false", "train.steps=14", "train.eval_every=5", "checkpoint.every=6",
                             "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "model.dropout=0.1",
                             "model.attention_dropout=0.1", "train.steps_per_call=4",
                             f"data.cache_dir={d / 'cache'}"])
    part = run(cfg, tmp_path / "r", stop_at=7, devices=jax.devices()[:8])
    assert part.interrupted and part.final_step == 7 and checkpoint_steps(tmp_path / "r")[-1] == 7
    rest = run(cfg, tmp_path / "r", devices=jax.devices()[:8])
    assert rest.final_step == 14
    assert losses(tmp_path / "r") == one.results["losses"]


def test_two_executables_compiled_once_each():
    from xlplastic.loop import put_batches, run_call
    from xlplastic.sharding import make_mesh
    from xlplastic.train import Specials, build_trainer

    cfg = load_config(TINY, ["train.steps_per_call=3", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    mesh = make_mesh(cfg.mesh, jax.devices()[:8])
    tr = build_trainer(cfg, mesh, 400, Specials(pad=1, mask=4, all_ids=(0, 1, 2, 3, 4)))
    rng = np.random.default_rng(0)
    state = tr.init()
    for n in (3, 1, 3, 3, 1):
        batch = put_batches([{"tokens": rng.integers(5, 400, (8, 32)).astype(np.int32)} for _ in range(n)], mesh, 8)
        state, metrics = run_call(tr, state, batch, n)
        assert metrics["loss"].shape == ((n,) if n > 1 else ())
    assert tr.steps._cache_size() == 1 and tr.step._cache_size() == 1
    assert int(state["step"]) == 11
    # the state keeps its shardings through the multi-step call
    for leaf, sh in zip(jax.tree.leaves(state), jax.tree.leaves(tr.state_shardings)):
        assert leaf.sharding.is_equivalent_to(sh, leaf.ndim)


def test_k_steps_equal_single_steps_with_resets_and_accumulation():
    """Forgetting resets (every 2 updates) and gradient accumulation inside the scanned step: the
    parameters and optimizer state after 3-step calls equal those after single calls, bit for bit."""
    from xlplastic.loop import put_batches, run_call
    from xlplastic.sharding import make_mesh
    from xlplastic.train import Specials, build_trainer

    cfg = load_config(TINY, ["forgetting.every=2", "train.grad_accum=2", "train.steps=7",
                             "model.dropout=0.1", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    mesh = make_mesh(cfg.mesh, jax.devices()[:8])
    tr = build_trainer(cfg, mesh, 400, Specials(pad=1, mask=4, all_ids=(0, 1, 2, 3, 4)))
    rng = np.random.default_rng(1)
    batches = [{"tokens": rng.integers(5, 400, (8, 32)).astype(np.int32)} for _ in range(6)]
    single, grouped = tr.init(), tr.init()
    for b in batches:
        single, _ = run_call(tr, single, put_batches([b], mesh, 8), 1)
    resets = []
    for i in (0, 3):
        grouped, m = run_call(tr, grouped, put_batches(batches[i:i + 3], mesh, 8), 3)
        resets += list(np.asarray(m["reset"]))
    assert resets == [0, 1, 0, 1, 0, 1]  # after updates 2, 4, 6
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(grouped)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
