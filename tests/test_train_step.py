"""`make_train_step` on a toy objective, without a model or a trainer: the update is exactly
-lr * gradient for a trainable group, a frozen group stays bit-identical, gradient accumulation over
micro-batches equals the full batch, and the step counter advances."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xlplastic.train import Objective, make_train_step


def _toy():
    """Least squares on `x @ w + b`, summed over rows (the objective's convention: sums and counts)."""

    def loss(_encoder, params, batch, _key):
        pred = batch["x"] @ params["w"] + params["b"]
        err = ((pred - batch["y"]) ** 2).sum()
        return err, (jnp.float32(batch["x"].shape[0]), jnp.float32(0.0))

    return Objective(batch_ndims={"x": 2, "y": 1}, loss=loss)


def _state(tx, params):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def test_update_is_minus_lr_times_gradient_and_frozen_stays():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=3), jnp.float32), "b": jnp.float32(0.5)}
    batch = {"x": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), "y": jnp.asarray(rng.normal(size=8), jnp.float32)}
    labels = {"w": "body", "b": "task_head"}
    tx = optax.sgd(1.0)  # unit learning rate: the step scales by group_lrs
    step = jax.jit(make_train_step(_toy(), lambda p: None, tx, labels, frozenset({"body"}),
                                   lambda s: {"*": jnp.float32(0.1)}, jax.random.PRNGKey(0)))
    new, metrics = step(_state(tx, params), batch)

    def mean_loss(w):
        return (((batch["x"] @ w + params["b"]) - batch["y"]) ** 2).sum() / 8

    want_w = params["w"] - 0.1 * jax.grad(mean_loss)(params["w"])
    np.testing.assert_allclose(new["params"]["w"], want_w, rtol=1e-6)
    assert new["params"]["b"] == params["b"]  # frozen: bit-identical
    assert int(new["step"]) == 1
    np.testing.assert_allclose(metrics["loss"], mean_loss(params["w"]), rtol=1e-6)


def test_accumulation_equals_the_full_batch():
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=4), jnp.float32), "b": jnp.float32(0.0)}
    batch = {"x": jnp.asarray(rng.normal(size=(12, 4)), jnp.float32), "y": jnp.asarray(rng.normal(size=12), jnp.float32)}
    labels = {"w": "body", "b": "body"}
    tx = optax.adam(1.0)
    outs = []
    for accum in (1, 3):
        step = jax.jit(make_train_step(_toy(), lambda p: None, tx, labels, frozenset({"body"}),
                                       lambda s: {"*": jnp.float32(1e-2)}, jax.random.PRNGKey(0), accum=accum))
        outs.append(step(_state(tx, params), batch))
    for k in ("w", "b"):
        np.testing.assert_allclose(outs[0][0]["params"][k], outs[1][0]["params"][k], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(outs[0][1]["loss"], outs[1][1]["loss"], rtol=1e-6)
