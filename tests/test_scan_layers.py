"""Scanned layers (`model.scan_layers`): the same initial draws and the same function as the unrolled model,
on one device and on a data x fsdp x tensor mesh, with dropout, remat, forgetting and Sep bottom layers;
checkpoints of either layout feed the other (`init.from_run`), and a run resumes across the scanned model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from cli_helpers import train_rows
from xlplastic.config import load_config
from xlplastic.layout import stack_map
from xlplastic.run import run
from xlplastic.sharding import make_mesh
from xlplastic.train import Specials, build_trainer

V, PAD = 64, 1
SPECIALS = Specials(pad=PAD, mask=4, all_ids=(0, 1, 2, 3, 4))
TOL = 1e-6


def _cfg(root, *over):
    return load_config(root / "configs/tiny.yaml", ["train.steps=6", "mesh.data=1", *over])


def _batch(step):
    rng = np.random.default_rng(step)
    toks = rng.integers(5, V, size=(8, 32)).astype(np.int32)
    toks[:, 0], toks[:, -1] = 0, 2
    toks[::3, 20:] = PAD  # some padded rows
    return {"tokens": jnp.asarray(toks)}


def _flat(params) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}


def _saved(run_dir) -> dict[str, np.ndarray]:
    """The parameters of a run's latest checkpoint, by path."""
    import orbax.checkpoint as ocp

    from xlplastic.checkpoint import latest_state_dir

    state_dir, _ = latest_state_dir(run_dir)
    return _flat(ocp.PyTreeCheckpointer().restore(state_dir)["params"])


def _as_unrolled(flat: dict) -> dict:
    """A scanned model's parameters in unrolled names (layers/x[j] -> layer_<first+j>/x)."""
    out = {k: v for k, v in flat.items() if not k.startswith("layers/")}
    firsts = sorted(int(k.split("/")[0][6:]) for k in out if k.startswith("layer_"))
    for k, v in flat.items():
        if k.startswith("layers/"):
            first = firsts[-1] + 1 if firsts else 0
            for j in range(v.shape[0]):
                out[f"layer_{first + j}/{k[7:]}"] = v[j]
    return out


def _losses(root, over, devices, n=5):
    mesh = make_mesh(_cfg(root, *over).mesh, devices)
    trainer = build_trainer(_cfg(root, *over), mesh, V, SPECIALS)
    state, losses = trainer.init(), []
    for s in range(n):
        state, m = trainer.step(state, _batch(s))
        losses.append(float(m["loss"]))
    return np.array(losses), trainer, state


CASES = {
    "dropout": ("model.dropout=0.1", "model.attention_dropout=0.1"),
    "forgetting every 2": ("forgetting.every=2", "forgetting.warmup_steps=0", "model.dropout=0.1"),
    "remat dots, pre-LN": ("model.remat=dots", "model.norm=pre", "model.dropout=0.1", "model.attention_dropout=0.1"),
}


def test_remat_policies_do_not_change_the_function(root):
    """`remat: block` and `dots` recompute in the backward pass what `none` keeps: the same losses."""
    over = ("model.dropout=0.1", "model.attention_dropout=0.1")
    want, _, _ = _losses(root, over, jax.devices()[:1], n=3)
    for remat in ("block", "dots"):
        got, _, _ = _losses(root, (*over, f"model.remat={remat}"), jax.devices()[:1], n=3)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=remat)


@pytest.mark.parametrize("case", list(CASES))
def test_scanned_equals_unrolled_losses(root, case):
    over = CASES[case]
    want, t_u, s_u = _losses(root, over, jax.devices()[:1])
    got, t_s, s_s = _losses(root, (*over, "model.scan_layers=true"), jax.devices()[:1])
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    # same parameters after training, leaf by leaf, in unrolled names; the stack is one `body` leaf per kind
    fu, fs = _flat(s_u["params"]), _flat(s_s["params"])
    assert any(k.startswith("layers/") for k in fs) and not any(k.startswith("layer_") for k in fs)
    assert set(_as_unrolled(fs)) == set(fu)
    for k, v in _as_unrolled(fs).items():
        np.testing.assert_allclose(v, fu[k], rtol=0, atol=1e-5, err_msg=k)
    assert {v for k, v in flatten_dict(t_s.labels).items() if k[0] == "layers"} == {"body"}


def test_scanned_on_a_mesh_equals_one_device(root):
    """data=2 x fsdp=2 x tensor=2: the stack's `layers` axis stays whole, the rest shards as unrolled."""
    over = ("model.scan_layers=true", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "model.dropout=0.1")
    one, _, _ = _losses(root, ("model.scan_layers=true", "model.dropout=0.1"), jax.devices()[:1], n=3)
    eight, trainer, _ = _losses(root, over, jax.devices()[:8], n=3)
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-5)
    for k, sh in flatten_dict(trainer.param_shardings).items():
        if k[0] == "layers":
            assert sh.spec[0] is None, (k, sh.spec)
    assert any(any(e is not None for e in sh.spec) for k, sh in flatten_dict(trainer.param_shardings).items()
               if k[0] == "layers")


def test_separate_bottom_layers_stay_unrolled(root):
    """With Sep copies of the bottom layer, the stack holds the shared layers only, and losses agree."""
    over = ("model.languages=[en,fr]", "model.separate.layers=1", "model.separate.embeddings=true")
    mesh = make_mesh(_cfg(root, *over).mesh, jax.devices()[:1])
    lang = jnp.array([0, 1] * 4, jnp.int32)
    res = {}
    for scan in ("false", "true"):
        t = build_trainer(_cfg(root, *over, f"model.scan_layers={scan}"), mesh, V, SPECIALS)
        state, out = t.init(), []
        for s in range(3):
            state, m = t.step(state, {**_batch(s), "lang": lang})
            out.append(float(m["loss"]))
        res[scan] = (np.array(out), _flat(state["params"]))
    np.testing.assert_allclose(res["true"][0], res["false"][0], rtol=0, atol=TOL)
    keys = set(res["true"][1])
    assert {"lang_en/layer_0/mlp/in_kernel", "lang_fr/layer_0/mlp/in_kernel", "layers/mlp/in_kernel"} <= keys
    assert res["true"][1]["layers/mlp/in_kernel"].shape[0] == 1  # tiny: 2 layers, the bottom one separate


def test_stack_map():
    keys = ["layer_3/mlp/in_kernel", "layer_2/mlp/in_kernel", "lang_fr/layer_0/mlp/in_kernel", "token_embed"]
    assert stack_map(keys) == {"layers/mlp/in_kernel": ["layer_2/mlp/in_kernel", "layer_3/mlp/in_kernel"]}


@pytest.mark.parametrize("src, dst", [("true", "false"), ("false", "true")])
def test_a_checkpoint_of_either_layout_initialises_the_other(root, tmp_path, src, dst):
    """`init.from_run` converts between the layouts: the body taken from the other layout is the same."""
    base = ["train.steps=3", "checkpoint.every=3"]
    run(_cfg(root, *base, f"model.scan_layers={src}"), tmp_path / "a", devices=jax.devices()[:1])
    run(_cfg(root, "train.steps=1", "checkpoint.every=1", f"model.scan_layers={dst}",
             f"init.from_run={tmp_path / 'a'}", "train.trainable=[token_embedding]"), tmp_path / "b",
        devices=jax.devices()[:1])
    fa, fb = _saved(tmp_path / "a"), _saved(tmp_path / "b")
    assert any(k.startswith("layers/") for k in (fa if src == "true" else fb))
    fa, fb = (_as_unrolled(f) if any(k.startswith("layers/") for k in f) else f for f in (fa, fb))
    body = [k for k in fa if k.startswith("layer_")]
    assert body
    for k in body:  # body frozen in b (only token embeddings train): exactly a's values
        np.testing.assert_array_equal(fb[k], fa[k], err_msg=k)


def test_resume_across_the_scanned_model_equals_uninterrupted(root, tmp_path):
    over = ["model.scan_layers=true", "train.steps=6", "checkpoint.every=3",
            "model.dropout=0.1"]
    run(_cfg(root, *over), tmp_path / "full", devices=jax.devices()[:1])
    run(_cfg(root, *over), tmp_path / "cut", devices=jax.devices()[:1], stop_at=3)
    run(_cfg(root, *over), tmp_path / "cut", devices=jax.devices()[:1])
    want, got = train_rows(tmp_path / "full"), train_rows(tmp_path / "cut")
    assert [r["step"] for r in got] == list(range(1, 7))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bit for bit
    full, cut = _saved(tmp_path / "full"), _saved(tmp_path / "cut")
    assert set(full) == set(cut) and any(k.startswith("layers/") for k in full)
    for k, v in full.items():
        np.testing.assert_array_equal(cut[k], v, err_msg=k)


def test_changing_the_layout_of_a_run_is_refused_in_one_line(root, tmp_path):
    from xlplastic.errors import UserError

    over = ["train.steps=2", "checkpoint.every=2"]
    run(_cfg(root, *over), tmp_path / "r", devices=jax.devices()[:1])
    with pytest.raises(UserError, match="scan_layers") as e:
        run(_cfg(root, *over, "train.steps=4", "model.scan_layers=true"), tmp_path / "r", devices=jax.devices()[:1],
            allow_change=("train.steps",))
    assert "\n" not in str(e.value)


def test_redraws_are_the_same_in_both_layouts(root):
    """Forgetting / re-initialisation of the body draws the same values whichever the layout."""
    from xlplastic.forgetting import redraw_groups

    _, t_u, s_u = _losses(root, (), jax.devices()[:1], n=1)
    _, t_s, s_s = _losses(root, ("model.scan_layers=true",), jax.devices()[:1], n=1)
    key = jax.random.PRNGKey(3)
    for rule in ("normal", "matrix_stats"):
        u = _flat(redraw_groups(s_u["params"], t_u.labels, ("body", "token_embedding"), key, rule=rule, std=0.02, pad_id=PAD))
        s = _as_unrolled(_flat(redraw_groups(s_s["params"], t_s.labels, ("body", "token_embedding"), key, rule=rule,
                                             std=0.02, pad_id=PAD)))
        for k, v in u.items():
            np.testing.assert_allclose(s[k], v, rtol=0, atol=1e-6, err_msg=f"{rule} {k}")
