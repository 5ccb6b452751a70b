"""On-device CKA kernels (xlplastic.analysis.cka) against the float64 NumPy reference of the published formulas."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from xlplastic.analysis import cka as K
from xlplastic.analysis import numpy_reference as R

TOL = 1e-6  # absolute, on CKA values in [0, 1]; float32 kernels vs float64 reference


def _pair(seed, n=300, d1=32, d2=48):
    """Two related representations: Y is a noisy nonlinear function of X (CKA well inside (0, 1))."""
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, d1))
    y = np.tanh(x @ r.normal(size=(d1, d2)) / np.sqrt(d1)) + 0.5 * r.normal(size=(n, d2))
    return x, y


def _models(seed, n, widths=(24, 40)):
    """3 X layers of width d1, 4 Y layers of width d2, with varied similarities between them."""
    r = np.random.default_rng(seed)
    d1, d2 = widths
    h = r.normal(size=(n, d1))
    xs = []
    for _ in range(3):
        h = np.tanh(h @ r.normal(size=(d1, d1)) / np.sqrt(d1)) + 0.3 * r.normal(size=(n, d1))
        xs.append(h)
    ys = [xs[min(j, 2)] @ r.normal(size=(d1, d2)) + (0.2 + 0.5 * j) * r.normal(size=(n, d2)) for j in range(4)]
    return np.stack(xs), np.stack(ys)


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_matches_reference(debiased):
    x, y = _pair(0)
    got = K.linear_cka(x, y, debiased=debiased)
    want = R.feature_space_linear_cka(x, y, debiased=debiased)
    assert got.shape == () and got.dtype == np.float32
    assert 0.1 < want < 0.9
    assert abs(float(got) - want) < TOL
    # The Gram-space reference agrees with the feature-space one (same estimator, two derivations).
    assert abs(R.cka(R.gram_linear(x), R.gram_linear(y), debiased=debiased) - want) < 1e-12


@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_cka_matches_reference(debiased):
    x, y = _pair(1, n=200)
    for threshold in (1.0, 0.5):
        got = float(K.rbf_cka(x, y, threshold=threshold, debiased=debiased))
        want = R.cka(R.gram_rbf(x, threshold), R.gram_rbf(y, threshold), debiased=debiased)
        assert 0.05 < want < 0.95
        assert abs(got - want) < TOL, (threshold, got, want)


@pytest.mark.parametrize("kernel,debiased", [("linear", False), ("linear", True), ("rbf", False)])
def test_cka_matrix_all_pairs_match_reference(kernel, debiased):
    xs, ys = _models(2, n=256)
    got = np.asarray(K.cka_matrix(xs, ys, kernel=kernel, debiased=debiased))
    want = R.cka_matrix(list(xs), list(ys), kernel=kernel, debiased=debiased)
    assert got.shape == (3, 4)
    assert want.max() - want.min() > 0.2  # the pairs genuinely differ
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    # A list of layers is accepted as well as a stacked array.
    if kernel == "linear" and not debiased:
        np.testing.assert_allclose(np.asarray(K.cka_matrix(list(xs), list(ys))), got, rtol=0, atol=1e-7)


def test_invariances():
    x, _ = _pair(3, n=300, d1=32)
    r = np.random.default_rng(3)
    q, _ = np.linalg.qr(r.normal(size=(32, 32)))
    offset = 50.0 * r.normal(size=(1, 32))
    y = _pair(4, n=300, d1=32, d2=32)[1]
    for debiased in (False, True):
        for fn in (K.linear_cka, K.rbf_cka):
            assert abs(float(fn(x, x @ q, debiased=debiased)) - 1) < 1e-5  # orthogonal transform
            assert abs(float(fn(x, 7.5 * x, debiased=debiased)) - 1) < 1e-5  # isotropic scaling
            base = float(fn(x, y, debiased=debiased))
            assert abs(float(fn(x, y + offset, debiased=debiased)) - base) < 1e-5  # translation
            assert base < 0.9


def test_debiased_linear_cka_removes_the_finite_sample_bias():
    r = np.random.default_rng(5)
    n, d = 4000, 256
    x, y = r.normal(size=(n, d)), r.normal(size=(n, d))  # independent: population CKA is 0
    biased = float(K.linear_cka(x, y))
    debiased = float(K.linear_cka(x, y, debiased=True))
    assert biased > 0.04  # ≈ d / (n + d) from finite-sample noise alone
    assert abs(debiased) < 0.005
    assert abs(debiased - R.feature_space_linear_cka(x, y, debiased=True)) < TOL


def _feed(xs, ys, sizes, b, pad_value=0.0, state=None, put=lambda a: a):
    """Streams the rows of xs/ys in chunks of `sizes`, each padded to b rows, through cka_update."""
    state = K.cka_init(xs.shape[0], xs.shape[2], ys.shape[0], ys.shape[2]) if state is None else state
    start = 0
    for sz in sizes:
        xb = np.full((xs.shape[0], b, xs.shape[2]), pad_value, np.float32)
        yb = np.full((ys.shape[0], b, ys.shape[2]), pad_value, np.float32)
        xb[:, :sz], yb[:, :sz] = xs[:, start : start + sz], ys[:, start : start + sz]
        state = K.cka_update(state, put(xb), put(yb), sz)
        start += sz
    assert start == xs.shape[1]
    return state


def _offset_models(n):
    xs, ys = _models(6, n)
    xs[:, :, :4] += 100.0  # big-mean "outlier" dimensions, as in transformer hidden states
    ys[:, :, -3:] -= 250.0
    ys[1] += 40.0
    return xs, ys


def test_streaming_equals_full_computation():
    sizes = [64, 17, 64, 64, 3, 64, 64, 40]  # uneven, and a padded last batch
    xs, ys = _offset_models(sum(sizes))
    state = _feed(xs, ys, sizes, b=64, pad_value=np.nan)  # padding never leaks in, even as NaN
    assert int(state.count) == sum(sizes)
    for debiased in (False, True):
        got = np.asarray(K.cka_result(state, debiased=debiased))
        full = np.asarray(K.cka_matrix(xs, ys, debiased=debiased))
        want = R.cka_matrix(list(xs), list(ys), debiased=debiased)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
        np.testing.assert_allclose(got, full, rtol=0, atol=TOL)

    # A bool row mask works like a count, and the whole set in one batch gives the same statistics.
    mask = np.zeros(512, bool)
    mask[: xs.shape[1]] = True
    xb = np.zeros((3, 512, xs.shape[2]), np.float32)
    yb = np.zeros((4, 512, ys.shape[2]), np.float32)
    xb[:, : xs.shape[1]], yb[:, : xs.shape[1]] = xs, ys
    one = K.cka_update(K.cka_init(3, xs.shape[2], 4, ys.shape[2]), xb, yb, mask)
    np.testing.assert_allclose(
        np.asarray(K.cka_result(one, debiased=True)), np.asarray(K.cka_result(state, debiased=True)), rtol=0, atol=TOL
    )


def test_streaming_shift_keeps_float32_accurate_with_large_offsets():
    # Raw float32 moments of values ~1e3 with unit spread would lose most digits (x² ~ 1e6, so the
    # rounding of Σx² is ~eps·1e6·N, a few % of the centred N·σ²). The shift keeps reference accuracy.
    r = np.random.default_rng(7)
    n = 4096
    x = r.normal(size=(1, n, 8))
    y = x @ r.normal(size=(8, 8)) + r.normal(size=(1, n, 8))
    x += 1000.0
    y += 3000.0
    state = _feed(x, y, [512] * 8, b=512)
    for debiased in (False, True):
        want = R.feature_space_linear_cka(x[0], y[0], debiased=debiased)
        assert abs(float(K.cka_result(state, debiased=debiased)[0, 0]) - want) < TOL


def test_streaming_with_rows_sharded_over_devices():
    devices = np.array(jax.devices()[:8])
    assert devices.size == 8
    mesh = Mesh(devices, ("data",))
    rows = NamedSharding(mesh, P(None, "data", None))
    sizes = [64, 64, 30, 64, 21]
    xs, ys = _offset_models(sum(sizes))
    plain = _feed(xs, ys, sizes, b=64)
    state0 = K.cka_init(3, xs.shape[2], 4, ys.shape[2], sharding=NamedSharding(mesh, P()))
    sharded = _feed(xs, ys, sizes, b=64, state=state0, put=lambda a: jax.device_put(a, rows))
    assert len(sharded.xy.sharding.device_set) == 8
    assert int(sharded.count) == int(plain.count)
    # The shift (first batch's mean) may differ in the last bits with the reduction order, so compare
    # it, then the shift-invariant centred statistics the results are built from.
    np.testing.assert_allclose(np.asarray(sharded.shift_x), np.asarray(plain.shift_x), rtol=1e-6, atol=1e-6)
    t_sharded, t_plain = K._moment_terms(sharded), K._moment_terms(plain)
    for name in ("xty", "xtx", "yty", "sqn_x", "ssr_xy", "ssr_xx", "ssr_yy"):
        np.testing.assert_allclose(np.asarray(getattr(t_sharded, name)), np.asarray(getattr(t_plain, name)), rtol=1e-5)
    for debiased in (False, True):
        np.testing.assert_allclose(
            np.asarray(K.cka_result(sharded, debiased=debiased)),
            np.asarray(K.cka_result(plain, debiased=debiased)),
            rtol=0,
            atol=TOL,
        )


def test_minibatch_estimator_is_the_mean_of_per_batch_unbiased_hsic():
    xs, ys = _models(8, n=300)
    sizes = [128, 128, 44]
    state = K.minibatch_cka_init(3, 4)
    start = 0
    hxy, hxx, hyy = np.zeros((3, 4)), np.zeros(3), np.zeros(4)
    for sz in sizes:
        xb = np.zeros((3, 128, xs.shape[2]), np.float32)
        yb = np.zeros((4, 128, ys.shape[2]), np.float32)
        xb[:, :sz], yb[:, :sz] = xs[:, start : start + sz], ys[:, start : start + sz]
        state = K.minibatch_cka_update(state, xb, yb, sz)
        # Reference: Nguyen et al.'s HSIC_1 = <unbiased-centred K, unbiased-centred L> / (n(n-3)) per batch.
        kx = [R.center_gram(R.gram_linear(x[start : start + sz]), True) for x in xs]
        ky = [R.center_gram(R.gram_linear(y[start : start + sz]), True) for y in ys]
        s = 1.0 / (sz * (sz - 3))
        hxy += s * np.array([[np.vdot(a, b) for b in ky] for a in kx])
        hxx += s * np.array([np.vdot(a, a) for a in kx])
        hyy += s * np.array([np.vdot(b, b) for b in ky])
        start += sz
    want = hxy / np.sqrt(np.outer(hxx, hyy))
    got = np.asarray(K.minibatch_cka_result(state))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # It is an estimator of its own: not the full-data debiased CKA.
    full = R.cka_matrix(list(xs), list(ys), debiased=True)
    assert np.abs(got - full).max() > 1e-4


def test_state_bytes_formula():
    state = K.cka_init(3, 24, 4, 40)
    assert K.cka_state_bytes(3, 24, 4, 40) == sum(a.nbytes for a in jax.tree_util.tree_leaves(state))
