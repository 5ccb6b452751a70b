"""Active forgetting: which leaves reset and when, optimizer-state restarts, the per-episode LR schedule,
sharding/compilation invariance, and determinism across devices and resume."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlplastic.config import ForgettingConfig, load_config
from xlplastic.forgetting import episode_schedule, redraw_groups, reset_steps
from xlplastic.run import run
from xlplastic.sharding import make_mesh
from xlplastic.train import Specials, build_trainer

V, PAD = 64, 1
SPECIALS = Specials(pad=PAD, mask=4, all_ids=(0, 1, 2, 3, 4))


def _cfg(root, *over):
    return load_config(
        root / "configs/tiny.yaml",
        ["train.steps=10", "mesh.data=1", "train.optimizer.clip_norm=0.5", "model.dropout=0.0", *over],
    )


def _batch(step):
    rng = np.random.default_rng(step)
    toks = rng.integers(5, V, size=(8, 32)).astype(np.int32)
    toks[:, 0], toks[:, -1] = 0, 2
    return {"tokens": jnp.asarray(toks)}


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _run_steps(trainer, n):
    state = trainer.init()
    states = []
    for s in range(n):
        state, _ = trainer.step(state, _batch(s))
        states.append(jax.tree.map(np.asarray, state))
    return states


@pytest.fixture(scope="module")
def pair(request):
    root = request.config.rootpath
    mesh = make_mesh(_cfg(root).mesh, jax.devices()[:1])
    # A constant LR on both sides (and for the episode schedule) so the two runs differ only by the reset.
    const = ("train.schedule.kind=constant", "train.schedule.warmup_steps=0")
    std = build_trainer(_cfg(root, *const), mesh, V, SPECIALS)
    fgt = build_trainer(
        _cfg(root, *const, "forgetting.every=3", "forgetting.warmup_steps=0", "forgetting.end_lr=1e-3"), mesh, V, SPECIALS
    )
    return std, fgt, _run_steps(std, 4), _run_steps(fgt, 4)


def test_reset_changes_exactly_the_token_embedding_at_step_k(pair):
    std, fgt, s_states, f_states = pair
    # Steps 1-2 identical (no reset yet); step 3 = update then reset: only token_embed differs.
    for i in (0, 1):
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s_states[i]["params"]), jax.tree.leaves(f_states[i]["params"])))
    s3, f3 = _flat(s_states[2]["params"]), _flat(f_states[2]["params"])
    changed = [k for k in s3 if not np.array_equal(s3[k], f3[k])]
    assert changed == ["['token_embed']"]
    emb = f3["['token_embed']"]
    assert np.all(emb[PAD] == 0.0)
    assert abs(emb[np.arange(V) != PAD].std() - 0.02) < 0.002  # N(0, 0.02): 64x64 draws
    # exactly the draw the reset rule makes (a pure function of seed and step)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), 0x0F0E), 3)
    want = redraw_groups(s_states[2]["params"], fgt.labels, ("token_embedding",), key, rule="normal", std=0.02, pad_id=PAD)
    np.testing.assert_allclose(emb, np.asarray(want["token_embed"]), rtol=1e-6, atol=1e-9)  # jit vs eager: 1 ulp


def test_optimizer_state_restarts_for_reset_group_only(pair):
    _, fgt, _, f_states = pair
    inner = f_states[2]["opt_state"][1].inner_states  # chain(clip, multi_transform)
    emb_adam = inner["token_embedding"].inner_state[0]
    body_adam = inner["body"].inner_state[0]
    assert int(emb_adam.count) == 0 and int(body_adam.count) == 3
    assert not np.any(emb_adam.mu["token_embed"]) and not np.any(emb_adam.nu["token_embed"])
    assert np.any(body_adam.mu["layer_0"]["mlp"]["in_kernel"])
    # one step later the embedding's count is 1 again while the body's keeps counting
    inner4 = f_states[3]["opt_state"][1].inner_states
    assert int(inner4["token_embedding"].inner_state[0].count) == 1
    assert int(inner4["body"].inner_state[0].count) == 4


def test_resets_keep_shardings_and_compile_once(pair, root):
    mesh = make_mesh(_cfg(root).mesh.model_copy(update={"data": 2, "fsdp": 2, "tensor": 2}))
    cfg = _cfg(root, "forgetting.every=2", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    trainer = build_trainer(cfg, mesh, V, SPECIALS)
    state = trainer.init()
    before = jax.tree.map(lambda x: x.sharding, state)
    for s in range(4):  # resets after steps 2 and 4
        state, m = trainer.step(state, _batch(s))
    assert float(m["reset"]) == 1.0
    assert np.all(np.asarray(state["params"]["token_embed"])[PAD] == 0.0)  # sharded draw, pad row zeroed
    state, m = trainer.step(state, _batch(4))
    assert float(m["reset"]) == 0.0
    assert jax.tree.map(lambda x: x.sharding, state) == before
    assert trainer.step._cache_size() == 1


def test_reset_steps_and_episode_schedule():
    f = ForgettingConfig(every=10, start=15, stop=45)
    assert reset_steps(f, 60) == [20, 30, 40]
    assert reset_steps(ForgettingConfig(every=10), 30) == [10, 20]  # never at the final step
    sch = episode_schedule(ForgettingConfig(every=10), 1.0, 2, 30)
    lr = np.array([float(sch(s)) for s in range(30)])
    # each episode: warm-up 0.5, 1.0, then linear decay towards 0; it restarts after every reset
    np.testing.assert_allclose(lr[[0, 1, 10, 11, 20, 21]], [0.5, 1.0] * 3, rtol=1e-6)
    assert lr[2] == 1.0 and np.all(np.diff(lr[2:10]) < 0) and lr[9] < 0.15
    # outside [start, stop], an "episode" runs from 0 to the first reset and from the last to the end
    sch2 = episode_schedule(f, 1.0, 0, 60)
    assert float(sch2(19)) < float(sch2(0)) and float(sch2(20)) == 1.0 and float(sch2(40)) == 1.0
    assert float(sch2(59)) < 0.06


def _losses(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], [r.get("reset", 0.0) for r in rows if "loss" in r]


def test_one_vs_eight_devices_and_resume_across_reset(root, tmp_path):
    over = ["train.steps=16", "forgetting.every=5", "checkpoint.every=0", "train.progress=false",
            f"data.cache_dir={tmp_path / 'cache'}", "train.optimizer.clip_norm=0.5"]
    one = load_config(root / "configs/tiny.yaml", over + ["mesh.data=1"])
    r1 = run(one, tmp_path / "one", devices=jax.devices()[:1])
    l1, resets = _losses(r1.run_dir)
    assert [i + 1 for i, r in enumerate(resets) if r] == [5, 10, 15]
    eight = load_config(root / "configs/tiny.yaml", over + ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    l8, _ = _losses(run(eight, tmp_path / "eight").run_dir)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    # interrupted at step 7 (between resets at 5 and 10), resumed: bit-identical losses
    part = run(one, tmp_path / "resumed", stop_at=7, devices=jax.devices()[:1])
    assert part.interrupted and part.final_step == 7
    lr_, _ = _losses(run(one, tmp_path / "resumed", devices=jax.devices()[:1]).run_dir)
    assert lr_ == l1
