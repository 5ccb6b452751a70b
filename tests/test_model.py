"""Model correctness against HF PyTorch RoBERTa, and train-step properties (accumulation, compilation)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xlplastic import model as model_lib
from xlplastic.config import load_config, validate
from xlplastic.run import run
from xlplastic.sharding import make_mesh
from xlplastic.train import Specials, build_trainer

torch = pytest.importorskip("torch", reason="PyTorch reference needs the [torch] extra")
transformers = pytest.importorskip("transformers", reason="HF reference needs the [torch] extra")


def _hf_to_params(sd, cfg, params):
    """Copies HF RobertaForMaskedLM weights into our parameter tree (RoBERTa positions start at pad+1 = 2)."""
    t = lambda k: sd[k].detach().numpy().astype(np.float64)  # noqa: E731
    D, N = cfg.hidden_size, cfg.num_heads
    H = D // N
    out = jax.tree.map(np.asarray, params)
    out["token_embed"] = t("roberta.embeddings.word_embeddings.weight")
    out["position_embed"] = t("roberta.embeddings.position_embeddings.weight")[2 : 2 + cfg.max_positions]
    out["type_embed"] = t("roberta.embeddings.token_type_embeddings.weight")[:1]
    out["embed_norm"] = {"scale": t("roberta.embeddings.LayerNorm.weight"), "bias": t("roberta.embeddings.LayerNorm.bias")}
    for i in range(cfg.num_layers):
        p = f"roberta.encoder.layer.{i}."
        qkv = [t(p + f"attention.self.{n}.weight").T.reshape(D, N, H) for n in ("query", "key", "value")]
        qkv_b = [t(p + f"attention.self.{n}.bias").reshape(N, H) for n in ("query", "key", "value")]
        out[f"layer_{i}"] = {
            "attention": {
                "qkv_kernel": np.stack(qkv),
                "qkv_bias": np.stack(qkv_b),
                "out_kernel": t(p + "attention.output.dense.weight").T.reshape(N, H, D),
                "out_bias": t(p + "attention.output.dense.bias"),
            },
            "attention_norm": {"scale": t(p + "attention.output.LayerNorm.weight"), "bias": t(p + "attention.output.LayerNorm.bias")},
            "mlp": {
                "in_kernel": t(p + "intermediate.dense.weight").T,
                "in_bias": t(p + "intermediate.dense.bias"),
                "out_kernel": t(p + "output.dense.weight").T,
                "out_bias": t(p + "output.dense.bias"),
            },
            "mlp_norm": {"scale": t(p + "output.LayerNorm.weight"), "bias": t(p + "output.LayerNorm.bias")},
        }
    out["mlm_head"] = {
        "kernel": t("lm_head.dense.weight").T,
        "bias": t("lm_head.dense.bias"),
        "norm": {"scale": t("lm_head.layer_norm.weight"), "bias": t("lm_head.layer_norm.bias")},
        "output_bias": t("lm_head.bias"),
    }
    return jax.tree.map(lambda a, b: jnp.asarray(a, jnp.float32).reshape(np.shape(b)), out, params)


def test_forward_matches_hf_roberta():
    V, T, B = 120, 24, 3
    cfg = validate(
        {"model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "mlp_dim": 64, "max_positions": 40,
                   "type_vocab_size": 1, "dropout": 0.0, "attention_dropout": 0.0}}
    ).model
    hf_cfg = transformers.RobertaConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=42, type_vocab_size=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        layer_norm_eps=cfg.layer_norm_eps, pad_token_id=1, hidden_act="gelu",
    )
    torch.manual_seed(0)
    hf = transformers.RobertaForMaskedLM(hf_cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms so a mis-mapped leaf shows up
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m = model_lib.create(cfg, V, seed=0)
    graphdef, params = model_lib.split(m)
    params = _hf_to_params(hf.state_dict(), cfg, params)
    abstract = nnx.split(m, nnx.Param)[1]

    @jax.jit  # one compilation instead of one per eager op
    def all_logits(params, tok):
        model = model_lib.merge(graphdef, abstract, params)
        h = model.encode(tok, jnp.full(tok.shape[:1], tok.shape[1]))
        return model.mlm_logits(h)

    rng = np.random.default_rng(0)
    tok = rng.integers(5, V, (B, T))
    tok[:, 0], tok[:, -1] = 0, 2
    logits = all_logits(params, jnp.asarray(tok))
    with torch.no_grad():
        ref = hf(torch.tensor(tok)).logits.numpy()
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=2e-4, atol=2e-4)


def test_padding_does_not_change_real_tokens():
    cfg = validate({"model": {"preset": "tiny", "dropout": 0.0, "attention_dropout": 0.0, "max_positions": 32}}).model
    m = model_lib.create(cfg, 50, seed=1)
    graphdef, params = model_lib.split(m)
    abstract = nnx.split(m, nnx.Param)[1]
    encode = jax.jit(lambda p, t, n: model_lib.merge(graphdef, abstract, p).encode(t, n))
    tok = jnp.asarray(np.random.default_rng(1).integers(5, 50, (1, 16)))
    padded = jnp.concatenate([tok, jnp.ones((1, 8), tok.dtype)], axis=1)
    a = encode(params, tok, jnp.array([16]))
    b = encode(params, padded, jnp.array([16]))[:, :16]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def _tiny_trainer(overrides=None, devices=None):
    raw = {"model": {"preset": "tiny", "dropout": 0.0, "attention_dropout": 0.0, "max_positions": 32},
           "mesh": {"data": -1}, "train": {"batch_size": 8, "steps": 10}}
    for k, v in (overrides or {}).items():
        raw.setdefault(k, {}).update(v)
    cfg = validate(raw)
    mesh = make_mesh(cfg.mesh, devices or jax.devices()[:1])
    return build_trainer(cfg, mesh, 100, Specials(pad=1, mask=4, all_ids=(0, 1, 2, 3, 4)))


def _batches(n, B=8, T=32):
    """Learnable sequences: each row counts upwards with its own stride (neighbours predict a token)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        start, stride = rng.integers(0, 95, (B, 1)), rng.integers(1, 4, (B, 1))
        tok = (5 + (start + stride * np.arange(T)[None]) % 95).astype(np.int32)
        tok[:, 0], tok[:, -1] = 0, 2
        tok[0, 20:] = 1
        out.append({"tokens": jnp.asarray(tok)})
    return out


def test_grad_accumulation_equals_full_batch():
    full, accum = _tiny_trainer(), _tiny_trainer({"train": {"grad_accum": 4}})
    s1, s2 = full.init(), accum.init()
    for b in _batches(4):
        s1, m1 = full.step(s1, b)
        s2, m2 = accum.step(s2, b)
        np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), s1["params"], s2["params"])


@pytest.mark.parametrize("variant", [{"norm": "pre", "remat": "block"}, {"dtype": "bfloat16"}])
def test_variants_train(variant):
    tr = _tiny_trainer({"model": variant, "train": {"steps": 100, "optimizer": {"lr": 3e-3}}})
    state = tr.init()
    losses = []
    b = _batches(1)[0]
    for _ in range(15):
        state, m = tr.step(state, b)
        losses.append(float(m["loss"]))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5, losses


def test_remat_matches_plain():
    a, b = _tiny_trainer(), _tiny_trainer({"model": {"remat": "block"}})
    sa, sb = a.init(), b.init()
    for batch in _batches(3):
        sa, ma = a.step(sa, batch)
        sb, mb = b.step(sb, batch)
    np.testing.assert_allclose(float(mb["loss"]), float(ma["loss"]), rtol=1e-6)


def test_no_recompilation_after_first_step(root, tmp_path):
    """Compilations in a run do not grow with its length, and the step is compiled exactly once."""
    compiles = []

    def listener(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    cache_was = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)  # cache hits would hide compilations
    try:
        counts = {}
        for steps in (6, 18):
            compiles.clear()
            cfg = load_config(root / "configs/tiny.yaml", [f"train.steps={steps}", "checkpoint.every=3",
                                                          "train.eval_every=4", "train.progress=false", "mesh.data=1",
                                                          f"data.cache_dir={tmp_path / 'cache'}"])
            run(cfg, tmp_path / f"r{steps}", devices=jax.devices()[:1])
            counts[steps] = len(compiles)
        assert counts[18] == counts[6], counts
    finally:
        jax.config.update("jax_enable_compilation_cache", cache_was)
        jax.monitoring.unregister_event_duration_listener(listener)
    rows = [json.loads(l) for l in (tmp_path / "r18" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 19))


def test_jitted_step_cache_stays_at_one():
    tr = _tiny_trainer()
    state = tr.init()
    for b in _batches(5):
        state, _ = tr.step(state, b)
    assert tr.step._cache_size() == 1


def test_dropout_draws_are_uniform_and_independent_of_sharding():
    """16-bit draws, four per Threefry evaluation: uniform, different per key, and the same values
    whether the array is computed whole or sharded over 8 devices (counters are global indices)."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from xlplastic.model import dropout, uniform16

    u = np.asarray(uniform16(jax.random.PRNGKey(0), (64, 128, 250))).astype(np.int64).ravel()
    assert abs(u.mean() / 65535 - 0.5) < 0.002 and abs(u.std() / 65535 - 12 ** -0.5) < 0.002
    hist = np.bincount(u >> 12, minlength=16) / u.size * 16
    assert np.all(np.abs(hist - 1) < 0.02), hist
    # neighbours (same Threefry evaluation) are uncorrelated
    pairs = u[: u.size // 4 * 4].reshape(-1, 4).astype(np.float64)
    assert abs(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) < 0.01
    assert abs(np.corrcoef(pairs[:, 1], pairs[:, 2])[0, 1]) < 0.01
    other = np.asarray(uniform16(jax.random.PRNGKey(1), (64, 128, 250))).astype(np.int64).ravel()
    assert (other == u).mean() < 0.001

    x = jnp.ones((512, 1000))
    y = np.asarray(dropout(x, 0.1, jax.random.PRNGKey(3)))
    assert abs((y == 0).mean() - 0.1) < 0.002 and abs(y.mean() - 1.0) < 0.003  # inverted: mean kept

    mesh = jax.make_mesh((2, 4), ("a", "b"), devices=jax.devices()[:8])
    f = jax.jit(lambda k: uniform16(k, (16, 32, 64)), out_shardings=NamedSharding(mesh, P("a", None, "b")))
    np.testing.assert_array_equal(np.asarray(f(jax.random.PRNGKey(5))),
                                  np.asarray(uniform16(jax.random.PRNGKey(5), (16, 32, 64))))
