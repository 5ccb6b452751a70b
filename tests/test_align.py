"""Alignment kernels (Procrustes, chunked/sharded NN and CSLS, MUSE P@1) and the evaluation-set readers."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from xlplastic.analysis import align
from xlplastic.data.evalsets import read_muse_dictionary, read_parallel, read_parallel_tsv, read_tatoeba
from xlplastic.errors import UserError

BIG = 100_000  # a chunk size larger than every test array: the unchunked computation


def _orthogonal(d: int, rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _muse_csls_scores(Q, T, S, k):
    """MUSE get_word_translation_accuracy(csls_knn_k) scores in float64: 2 cos - r_T(s) - r_S(t)."""
    Q, T, S = _unit(Q), _unit(T), _unit(S)
    r_t = np.sort(Q @ T.T, axis=1)[:, -k:].mean(1)
    r_s = np.sort(T @ S.T, axis=1)[:, -k:].mean(1)
    return 2 * (Q @ T.T) - r_t[:, None] - r_s[None, :]


@pytest.fixture(scope="module")
def synthetic():
    """Y = X W + noise for a random orthogonal W (2000 x 64)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 64)).astype(np.float32)
    W = _orthogonal(64, rng)
    Y = (X @ W + 0.05 * rng.standard_normal(X.shape)).astype(np.float32)
    return X, Y, W


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(1)
    return (rng.standard_normal((150, 24)).astype(np.float32),  # queries
            rng.standard_normal((230, 24)).astype(np.float32),  # targets (230: not a multiple of 8 or the chunks)
            rng.standard_normal((190, 24)).astype(np.float32))  # source population


@pytest.fixture(scope="module")
def mesh8():
    assert len(jax.devices()) == 8
    return jax.make_mesh((2, 4), ("a", "b"))


# ----------------------------------------------------------------------------------------------- Procrustes


def test_procrustes_recovers_rotation_and_matches_float64_svd(synthetic):
    X, Y, W = synthetic
    W_hat = np.asarray(align.procrustes(X, Y))
    assert np.linalg.norm(W_hat - W) / np.linalg.norm(W) < 0.01  # noise-limited (~0.6%)
    assert np.abs(W_hat @ W_hat.T - np.eye(64)).max() < 1e-4
    U, _, Vt = np.linalg.svd(X.astype(np.float64).T @ Y.astype(np.float64))
    assert np.abs(W_hat - U @ Vt).max() < 1e-4
    # retrieval after mapping is perfect, before mapping it is chance
    assert align.retrieval_precision(X @ W_hat, Y) == 1.0
    assert align.retrieval_precision(X, Y) < 0.02


def test_iterative_normalize_unit_rows_centred_columns(synthetic):
    X = synthetic[0] + 3.0  # a strong common direction
    Z = np.asarray(align.iterative_normalize(X, rounds=5))
    assert np.abs(np.linalg.norm(Z, axis=1) - 1).max() < 1e-5
    assert np.abs(Z.mean(0)).max() < 1e-4
    Z0 = np.asarray(align.iterative_normalize(X, rounds=0))  # unit length only: the mean stays
    assert np.abs(np.linalg.norm(Z0, axis=1) - 1).max() < 1e-5
    assert np.abs(Z0.mean(0)).max() > 0.05


def test_supervised_procrustes_on_dictionary_translates(synthetic):
    X, Y, _ = synthetic
    src = [f"s{i}" for i in range(len(X))]
    tgt = [f"t{i}" for i in range(len(Y))]
    train = [(f"s{i}", f"t{i}") for i in range(1500)] + [("s0", "oov")]
    fit = align.fit_procrustes_on_dictionary(src, X, tgt, Y, train, normalize=True)
    assert (fit["pairs_total"], fit["pairs_used"]) == (1501, 1500)
    Xn, Yn = align.iterative_normalize(X), align.iterative_normalize(Y)
    test = [(f"s{i}", f"t{i}") for i in range(1500, 2000)]
    r = align.word_translation(src, Xn, tgt, Yn, test, W=fit["W"])
    assert r["precision_at_1"]["nn"] == 1.0 and r["precision_at_1"]["csls"] == 1.0
    assert r["coverage"] == 1.0 and r["queries"] == 500
    assert align.word_translation(src, Xn, tgt, Yn, test, methods=("nn",))["precision_at_1"]["nn"] < 0.02


# ----------------------------------------------------------------------------------------------- search kernels


def test_nn_chunked_equals_unchunked_and_float64_reference(small):
    Q, T, _ = small
    s0, i0 = map(np.asarray, align.nearest_neighbors(Q, T, 5, chunk_size=BIG))
    ref = _unit(Q) @ _unit(T).T
    assert (i0 == np.argsort(-ref, axis=1, kind="stable")[:, :5]).all()
    assert np.abs(s0 - np.take_along_axis(ref, i0, 1)).max() < 1e-5
    for cs in (7, (13, 29), (64, 50), 230):
        s, i = map(np.asarray, align.nearest_neighbors(Q, T, 5, chunk_size=cs))
        assert (i == i0).all(), cs
        np.testing.assert_allclose(s, s0, atol=1e-6)
    s_dot, i_dot = map(np.asarray, align.nearest_neighbors(Q, T, 3, metric="dot", chunk_size=(11, 17)))
    dot = Q.astype(np.float64) @ T.T
    assert (i_dot == np.argsort(-dot, axis=1, kind="stable")[:, :3]).all()


def test_csls_chunked_equals_unchunked(small):
    Q, T, S = small
    i0 = np.asarray(align.csls_knn(Q, T, k=10, topn=3, source=S, chunk_size=BIG))
    for cs in (7, (13, 29), (64, 50)):
        assert (np.asarray(align.csls_knn(Q, T, k=10, topn=3, source=S, chunk_size=cs)) == i0).all(), cs


@pytest.mark.parametrize("auto", [False, True], ids=["explicit-mesh", "auto-mesh"])
def test_sharded_equals_single_device(small, mesh8, auto):
    Q, T, S = small
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,)) if auto else mesh8
    s0, i0 = map(np.asarray, align.nearest_neighbors(Q, T, 4, chunk_size=(32, 13)))
    s1, i1 = map(np.asarray, align.nearest_neighbors(Q, T, 4, chunk_size=(32, 13), mesh=mesh))
    assert (i1 == i0).all()
    np.testing.assert_allclose(s1, s0, atol=1e-6)
    c0 = np.asarray(align.csls_knn(Q, T, k=10, topn=2, source=S, chunk_size=(32, 13)))
    c1 = np.asarray(align.csls_knn(Q, T, k=10, topn=2, source=S, chunk_size=(32, 13), mesh=mesh))
    assert (c1 == c0).all()
    if not auto:  # fewer targets than devices x k: shards hold padding that must never win
        few = np.asarray(align.nearest_neighbors(Q, T[:11], 10, mesh=mesh)[1])
        assert (few == np.asarray(align.nearest_neighbors(Q, T[:11], 10)[1])).all()
        assert ((few >= 0) & (few < 11)).all() and all(len(set(r)) == 10 for r in few)  # 10 of the 11, no padding


def test_sharded_program_holds_a_target_shard_per_device(small, mesh8):
    Q, T, _ = small
    args = (Q, T)
    hlo = align._nn_jit.lower(*args, k=4, metric="cosine", qc=32, tc=13, mesh=mesh8).compile().as_text()
    # 230 targets over 8 devices: 29 each, padded to 3 chunks of 13 = 39 rows per device
    assert "f32[39,24]" in hlo and "f32[13,24]" in hlo


def test_csls_matches_muse_formula_float64(small):
    Q, T, S = small
    S = np.concatenate([Q, S])  # MUSE: queries are part of the source vocabulary
    ref = _muse_csls_scores(Q, T, S, 10)
    scores, idx = map(np.asarray, align.csls_knn(Q, T, k=10, topn=3, source=S, chunk_size=(40, 64), return_scores=True))
    order = np.argsort(-ref, axis=1, kind="stable")[:, :3]
    np.testing.assert_allclose(scores, np.take_along_axis(ref, idx, 1), atol=1e-5)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, order, 1), atol=1e-5)
    assert (idx == order).mean() > 0.99
    # default source population: the queries themselves
    ref_q = _muse_csls_scores(Q, T, Q, 5)
    assert (np.asarray(align.csls_knn(Q, T, k=5))[:, 0] == ref_q.argmax(1)).mean() > 0.99


def test_csls_beats_nn_on_hubs():
    """Queries share a mean direction; a few hub targets sit on it and are every query's cosine NN."""
    rng = np.random.default_rng(0)
    d, n = 64, 300
    m = rng.standard_normal(d)
    m /= np.linalg.norm(m)
    Q = m + 0.5 * rng.standard_normal((n, d)) / np.sqrt(d)
    T = Q + 0.7 * rng.standard_normal((n, d)) / np.sqrt(d)  # row i translates query i
    hubs = m + 0.05 * rng.standard_normal((3, d)) / np.sqrt(d)
    targets = np.concatenate([T, hubs]).astype(np.float32)
    pairs = np.stack([np.arange(n), np.arange(n)], 1)
    nn = align.translation_precision(Q, targets, pairs, method="nn")
    csls = align.translation_precision(Q, targets, pairs, method="csls", k=10)
    _, top = align.nearest_neighbors(Q, targets, 1)
    assert (np.asarray(top)[:, 0] >= n).mean() > 0.8  # the hubs win plain NN
    assert nn["precision_at_1"] < 0.2
    assert csls["precision_at_1"] > nn["precision_at_1"] + 0.5
    assert nn["queries"] == csls["queries"] == n


def test_word_translation_oov_and_multiple_gold():
    rng = np.random.default_rng(3)
    d = 16
    src_words = ["a", "b", "c", "d", "e"]
    X = rng.standard_normal((5, d)).astype(np.float32)
    # targets: x2 is a's translation (x1 is unrelated), y..ee translate b..e
    tgt_words = ["x1", "x2", "y", "z", "dd", "ee"]
    Y = np.concatenate([rng.standard_normal((1, d)), X[[0, 1, 2, 3, 4]]]).astype(np.float32)
    dictionary = [("a", "x1"), ("a", "x2"), ("b", "y"), ("c", "z"), ("d", "dd"), ("e", "ee"),
                  ("a", "nope"), ("zz", "y"), ("qq", "rr"), ("e", "x1")]
    r = align.word_translation(src_words, X, tgt_words, Y, dictionary, k=3)
    assert (r["pairs_total"], r["pairs_used"], r["queries"]) == (10, 7, 5)
    assert r["coverage"] == pytest.approx(0.7)
    assert r["precision_at_1"] == {"nn": 1.0, "csls": 1.0}  # a -> x2 counts (x1 is also gold)
    only_x1 = align.word_translation(src_words, X, tgt_words, Y, [("a", "x1"), ("b", "y")], methods=("nn", "csls_knn_2"))
    assert only_x1["precision_at_1"] == {"nn": 0.5, "csls_knn_2": 0.5}
    with pytest.raises(UserError, match="none of its 2 pairs"):
        align.word_translation(src_words, X, tgt_words, Y, [("q", "x1"), ("a", "w")])


def test_bad_inputs_are_user_errors(small):
    Q, T, _ = small
    with pytest.raises(UserError, match="k=300"):
        align.nearest_neighbors(Q, T, 300)
    with pytest.raises(UserError, match="24 and 10 dimensions"):
        align.nearest_neighbors(Q, T[:, :10])
    with pytest.raises(UserError, match="metric"):
        align.nearest_neighbors(Q, T, metric="l2")
    with pytest.raises(UserError, match="3 words but 150 vectors"):
        align.word_translation(["a", "b", "c"], Q, ["x"], T[:1], [("a", "x")])
    with pytest.raises(UserError, match="rows out of range"):
        align.translation_precision(Q, T, np.array([[0, 500]]))
    with pytest.raises(UserError, match="method"):
        align.translation_precision(Q, T, np.array([[0, 1]]), method="isf")


# ----------------------------------------------------------------------------------------------- readers


def test_readers_on_shared_data(shared_data):
    muse = shared_data / "muse"
    train = read_muse_dictionary(muse / "en-fr.0-5000.txt")
    test = read_muse_dictionary(muse / "en-fr.5000-6500.txt")
    assert len(train) == 10872 and len(test) == 2943
    assert train[0] == ("the", "le") and all(len(p) == 2 for p in train)
    fra, eng = read_tatoeba(shared_data / "tatoeba", "fra")
    assert len(fra) == len(eng) == 1000 and all(fra) and all(eng)
    swh = read_tatoeba(shared_data / "tatoeba", "swh")
    assert len(swh[0]) == len(swh[1]) == 390
    tsv = read_parallel_tsv(shared_data / "parallel" / "pud_en_fr_de_ru_zh.tsv", columns=["en", "zh"])
    assert list(tsv) == ["en", "zh"] and len(tsv["en"]) == len(tsv["zh"]) == 1000


def test_muse_reader_errors(tmp_path):
    bad = tmp_path / "en-xx.txt"
    bad.write_text("the le\nof de la\n")
    with pytest.raises(UserError, match=r"en-xx\.txt:2: 3 fields.*expected 2"):
        read_muse_dictionary(bad)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UserError, match=r"empty\.txt: no word pairs"):
        read_muse_dictionary(tmp_path / "empty.txt")
    with pytest.raises(UserError, match=r"missing\.txt: no such file"):
        read_muse_dictionary(tmp_path / "missing.txt")
    ok = tmp_path / "tabs.txt"
    ok.write_text("cat\tchat\n\ndog  chien\n")
    assert read_muse_dictionary(ok) == [("cat", "chat"), ("dog", "chien")]


def test_parallel_reader_errors(tmp_path):
    a, b = tmp_path / "x.de", tmp_path / "x.en"
    a.write_text("eins\nzwei\ndrei\n")
    b.write_text("one\ntwo\n")
    with pytest.raises(UserError) as e:
        read_parallel(a, b)
    assert "x.de has 3 lines" in str(e.value) and "x.en has 2" in str(e.value)
    b.write_bytes(b"one\ntw\xffo\nthree\n")
    with pytest.raises(UserError, match=r"x\.en:2: not UTF-8"):
        read_parallel(a, b)
    with pytest.raises(UserError) as e:
        read_tatoeba(tmp_path, "deu")
    assert "tatoeba.deu-eng.deu" in str(e.value) and "tatoeba.deu-eng.eng" in str(e.value)
    tsv = tmp_path / "p.tsv"
    tsv.write_text("id\ten\tfr\n1\thello\tbonjour\n2\tbye\n")
    with pytest.raises(UserError, match=r"p\.tsv:3: 2 tab-separated fields; expected 3"):
        read_parallel_tsv(tsv)
    tsv.write_text("id\ten\tfr\n1\thello\tbonjour\n")
    with pytest.raises(UserError, match="no column 'de'; expected one of: id, en, fr"):
        read_parallel_tsv(tsv, columns=["en", "de"])
    assert read_parallel_tsv(tsv, columns=["fr"]) == {"fr": ["bonjour"]}
