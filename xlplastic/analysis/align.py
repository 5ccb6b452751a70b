"""Cross-lingual alignment and retrieval kernels: Procrustes, nearest neighbours, CSLS, P@1.

Why: Conneau, Wu et al. (ACL 2020) measure how aligned two languages' representations are by mapping one
space onto the other with an orthogonal (Procrustes) map and scoring word translation / sentence retrieval
(MUSE dictionaries, XTREME Tatoeba). Those searches are vocab x vocab; here they run on device in float32
with HIGHEST-precision matmuls, in chunks of queries x chunks of targets with a running top-k, so no
nq x nt matrix is ever built, and optionally with the targets sharded over a device mesh (`jax.shard_map`:
each device keeps the top-k of its target shard, the k x devices candidates are merged).

Conventions (as MUSE): embeddings are normalised to unit length before cosine search and CSLS; a mapping W
acts on rows (`X @ W`) and is applied before that normalisation; precisions are fractions in [0, 1].
Ties go to the lowest target index, chunked or not, sharded or not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from xlplastic.errors import UserError

HIGHEST = lax.Precision.HIGHEST
DEFAULT_CHUNK = 4096
METRICS = ("cosine", "dot")

__all__ = [
    "procrustes",
    "iterative_normalize",
    "nearest_neighbors",
    "csls_knn",
    "translation_precision",
    "retrieval_precision",
    "word_translation",
    "fit_procrustes_on_dictionary",
]


# --------------------------------------------------------------------------------------------- helpers


def _f32(x, name: str, ndim: int = 2) -> jax.Array:
    a = jnp.asarray(x, dtype=jnp.float32)
    if a.ndim != ndim:
        raise UserError(f"{name}: got an array of shape {tuple(a.shape)}; expected a {ndim}-D array of vectors")
    return a


def _chunks(chunk_size) -> tuple[int, int]:
    """(query chunk, target chunk) from an int or a pair."""
    qc, tc = (chunk_size, chunk_size) if isinstance(chunk_size, (int, np.integer)) else tuple(chunk_size)
    if int(qc) < 1 or int(tc) < 1:
        raise UserError(f"chunk_size: got {chunk_size!r}; expected a positive int or a (queries, targets) pair of them")
    return int(qc), int(tc)


def _same_dim(a: jax.Array, b: jax.Array, what: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise UserError(f"{what}: vectors have {a.shape[1]} and {b.shape[1]} dimensions; expected the same dimension")


def _unit(x: jax.Array) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
    return x / jnp.maximum(norm, 1e-12)


def _mm_t(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b.T in float32 at HIGHEST precision."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=HIGHEST, preferred_element_type=jnp.float32)


# --------------------------------------------------------------------------------------------- Procrustes


@jax.jit
def _procrustes(X, Y):
    M = lax.dot_general(X, Y, (((0,), (0,)), ((), ())), precision=HIGHEST)
    U, _, Vt = jnp.linalg.svd(M, full_matrices=False)
    return jnp.matmul(U, Vt, precision=HIGHEST)


def procrustes(X, Y) -> jax.Array:
    """Orthogonal W (d x d) minimising ||X W - Y||_F: W = U V^T where U S V^T = SVD(X^T Y)."""
    X, Y = _f32(X, "procrustes X"), _f32(Y, "procrustes Y")
    if X.shape != Y.shape:
        raise UserError(f"procrustes: X is {tuple(X.shape)} and Y is {tuple(Y.shape)}; expected row-aligned pairs of the same shape")
    return _procrustes(X, Y)


@partial(jax.jit, static_argnames="rounds")
def _iterative_normalize(X, rounds: int):
    for _ in range(rounds):
        X = _unit(X)
        X = X - jnp.mean(X, axis=0, keepdims=True)
    return _unit(X)


def iterative_normalize(X, rounds: int = 5) -> jax.Array:
    """Unit-length rows, then mean-centred columns, `rounds` times, then unit length (Zhang et al. 2019)."""
    if rounds < 0:
        raise UserError(f"iterative_normalize: rounds={rounds}; expected 0 or more")
    return _iterative_normalize(_f32(X, "iterative_normalize X"), int(rounds))


# --------------------------------------------------------------------------------------------- chunked top-k


def _local_topk(Q, T, tids, tbias, *, k: int, qc: int, tc: int, scale: float):
    """Top-k of  scale * Q T^T - tbias  per query row, scanning query chunks x target chunks.

    Q: (nq, d), nq % qc == 0.  T: (nt, d), nt % tc == 0.  tids: (nt,) global target ids, -1 for padding rows
    (score -inf, they never win).  Returns (scores, ids), each (nq, k), best first.
    """
    nq, d = Q.shape
    Tc, idc, bc = T.reshape(-1, tc, d), tids.reshape(-1, tc), tbias.reshape(-1, tc)

    def per_query_chunk(q):
        def step(carry, xs):
            best_s, best_i = carry
            t, ids, b = xs
            s = scale * _mm_t(q, t) - b[None, :]
            s = jnp.where(ids[None, :] >= 0, s, -jnp.inf)
            # running best first: its ids are lower (targets are scanned in order), so ties keep the lowest id
            cand_s = jnp.concatenate([best_s, s], axis=1)
            cand_i = jnp.concatenate([best_i, jnp.broadcast_to(ids[None, :], s.shape)], axis=1)
            top_s, pos = lax.top_k(cand_s, k)
            return (top_s, jnp.take_along_axis(cand_i, pos, axis=1)), None

        init = (jnp.full((qc, k), -jnp.inf, jnp.float32), jnp.full((qc, k), -1, jnp.int32))
        (s, i), _ = lax.scan(step, init, (Tc, idc, bc))
        return s, i

    s, i = lax.map(per_query_chunk, Q.reshape(nq // qc, qc, d))
    return s.reshape(nq, k), i.reshape(nq, k)


def _place(x, mesh: Mesh, spec: P):
    """Lay a traced array out as `spec` on `mesh`: a reshard on Explicit axes, a constraint on Auto ones."""
    sharding = NamedSharding(mesh, spec)
    if any(t == AxisType.Explicit for t in mesh.axis_types):
        return jax.sharding.reshard(x, sharding)
    return lax.with_sharding_constraint(x, sharding)


def _search(Q, T, tbias, *, k: int, qc: int, tc: int, scale: float, mesh: Mesh | None):
    """Traced inside jit: pad queries/targets to the chunk (and shard) sizes, top-k, slice the padding off."""
    nq, d = Q.shape
    nt = T.shape[0]
    qc = min(qc, nq)
    nq_pad = -(-nq // qc) * qc
    ndev = 1 if mesh is None else mesh.size
    per_dev = -(-nt // ndev)
    tc = min(tc, per_dev)
    per_dev_pad = -(-per_dev // tc) * tc
    nt_pad = per_dev_pad * ndev
    Qp = jnp.pad(Q, ((0, nq_pad - nq), (0, 0)))
    Tp = jnp.pad(T, ((0, nt_pad - nt), (0, 0)))
    bp = jnp.pad(tbias, (0, nt_pad - nt))
    ar = jnp.arange(nt_pad, dtype=jnp.int32)
    ids = jnp.where(ar < nt, ar, -1)
    local = partial(_local_topk, k=k, qc=qc, tc=tc, scale=scale)
    if mesh is None:
        s, i = local(Qp, Tp, ids, bp)
    else:
        axes = tuple(mesh.axis_names)  # targets sharded over every mesh axis, queries replicated

        def per_device(q, t, tid, b):
            s, i = local(q, t, tid, b)
            return s[None], i[None]

        specs = (P(), P(axes), P(axes), P(axes))
        args = [_place(x, mesh, spec) for x, spec in zip((Qp, Tp, ids, bp), specs)]
        s, i = jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=(P(axes), P(axes)), check_vma=False)(*args)
        # (devices, nq, k) in shard order = ascending target ids; gather the k x devices candidates and merge
        s, i = _place(s, mesh, P()), _place(i, mesh, P())
        s = jnp.transpose(s, (1, 0, 2)).reshape(nq_pad, ndev * k)
        i = jnp.transpose(i, (1, 0, 2)).reshape(nq_pad, ndev * k)
        s, pos = lax.top_k(s, k)
        i = jnp.take_along_axis(i, pos, axis=1)
    return s[:nq], i[:nq]


@partial(jax.jit, static_argnames=("k", "metric", "qc", "tc", "mesh"))
def _nn_jit(Q, T, *, k: int, metric: str, qc: int, tc: int, mesh: Mesh | None):
    if metric == "cosine":
        Q, T = _unit(Q), _unit(T)
    return _search(Q, T, jnp.zeros(T.shape[0], jnp.float32), k=k, qc=qc, tc=tc, scale=1.0, mesh=mesh)


@partial(jax.jit, static_argnames=("k", "topn", "qc", "tc", "mesh", "with_scores"))
def _csls_jit(Q, T, S, *, k: int, topn: int, qc: int, tc: int, mesh: Mesh | None, with_scores: bool):
    Q, T, S = _unit(Q), _unit(T), _unit(S)
    search = partial(_search, qc=qc, tc=tc, mesh=mesh)
    r_s, _ = search(T, S, jnp.zeros(S.shape[0], jnp.float32), k=k, scale=1.0)  # each target's k NN sources
    r_s = jnp.mean(r_s, axis=1)
    scores, idx = search(Q, T, r_s, k=topn, scale=2.0)  # 2 cos - r_S(t); r_T(s) is constant per query
    if with_scores:
        r_t, _ = search(Q, T, jnp.zeros(T.shape[0], jnp.float32), k=k, scale=1.0)
        scores = scores - jnp.mean(r_t, axis=1, keepdims=True)
    return scores, idx


def _check_k(k: int, n: int, what: str) -> int:
    if not 1 <= int(k) <= n:
        raise UserError(f"{what}: k={k} but there are {n} vectors to choose from; expected 1 <= k <= {n}")
    return int(k)


def nearest_neighbors(Q, T, k: int = 1, *, metric: str = "cosine", chunk_size=DEFAULT_CHUNK, mesh: Mesh | None = None):
    """(scores [nq, k], indices [nq, k]) of the k best targets per query, best first.

    metric: "cosine" (rows normalised) or "dot".  chunk_size: int or (query chunk, target chunk).  mesh: shard
    the target rows over all of the mesh's devices; each computes its local top-k, the candidates are merged.
    """
    if metric not in METRICS:
        raise UserError(f"nearest_neighbors: metric={metric!r}; expected one of {', '.join(METRICS)}")
    Q, T = _f32(Q, "nearest_neighbors queries"), _f32(T, "nearest_neighbors targets")
    _same_dim(Q, T, "nearest_neighbors")
    k = _check_k(k, T.shape[0], "nearest_neighbors")
    qc, tc = _chunks(chunk_size)
    if Q.shape[0] == 0:
        return jnp.zeros((0, k), jnp.float32), jnp.zeros((0, k), jnp.int32)
    return _nn_jit(Q, T, k=k, metric=metric, qc=qc, tc=tc, mesh=mesh)


def _csls_args(Q, T, source, k, topn, chunk_size):
    Q, T = _f32(Q, "csls_knn queries"), _f32(T, "csls_knn targets")
    S = Q if source is None else _f32(source, "csls_knn source")
    _same_dim(Q, T, "csls_knn queries/targets")
    _same_dim(S, T, "csls_knn source/targets")
    k = _check_k(k, min(S.shape[0], T.shape[0]), "csls_knn neighbourhood")
    topn = _check_k(topn, T.shape[0], "csls_knn topn")
    qc, tc = _chunks(chunk_size)
    return (Q, T, S), dict(k=k, topn=topn, qc=qc, tc=tc)


def csls_knn(Q, T, *, k: int = 10, topn: int = 1, source=None, chunk_size=DEFAULT_CHUNK, mesh: Mesh | None = None,
             return_scores: bool = False):
    """Indices [nq, topn] of the best targets by CSLS (MUSE `csls_knn_{k}`), best first.

    CSLS(s, t) = 2 cos(s, t) - r_T(s) - r_S(t): r_T(s) the mean cosine of s's k nearest targets, r_S(t) the
    mean cosine of t's k nearest vectors of `source` (the whole source vocabulary; default the queries).
    All vectors are normalised to unit length first, as MUSE does.  r_T(s) does not change a query's ranking,
    so it is only computed with `return_scores=True`, which returns (scores, indices).
    """
    args, static = _csls_args(Q, T, source, k, topn, chunk_size)
    if args[0].shape[0] == 0:
        empty = jnp.zeros((0, static["topn"]), jnp.int32)
        return (empty.astype(jnp.float32), empty) if return_scores else empty
    scores, idx = _csls_jit(*args, **static, mesh=mesh, with_scores=return_scores)
    return (scores, idx) if return_scores else idx


# --------------------------------------------------------------------------------------------- evaluation


def _method_k(method: str, k: int) -> tuple[str, int]:
    """"nn", "csls" (neighbourhood k) or MUSE's "csls_knn_<k>"."""
    if method == "nn":
        return "nn", k
    if method == "csls":
        return "csls", k
    m = re.fullmatch(r"csls_knn_(\d+)", method)
    if m:
        return "csls", int(m.group(1))
    raise UserError(f"translation method {method!r}; expected nn, csls or csls_knn_<k>")


def _map(X: jax.Array, W) -> jax.Array:
    if W is None:
        return X
    W = _f32(W, "mapping W")
    if W.shape[0] != X.shape[1]:
        raise UserError(f"mapping W: shape {tuple(W.shape)} does not fit {X.shape[1]}-dim source vectors; expected ({X.shape[1]}, d)")
    return jnp.matmul(X, W, precision=HIGHEST)


def translation_precision(src_vecs, tgt_vecs, pairs, *, method: str = "nn", k: int = 10, W=None,
                          chunk_size=DEFAULT_CHUNK, mesh: Mesh | None = None) -> dict:
    """Word-translation P@1 on gold (source row, target row) pairs, MUSE style.

    Each distinct source word is one query over all target vectors; it is correct when its top-1 is any of
    its gold targets.  method: "nn" (cosine), "csls" (CSLS with neighbourhood k; the source population is all
    of `src_vecs`) or "csls_knn_<k>".  W (optional) maps the source vectors first (X @ W).
    """
    kind, kk = _method_k(method, k)
    X, Y = _map(_f32(src_vecs, "source vectors"), W), _f32(tgt_vecs, "target vectors")
    _same_dim(X, Y, "translation_precision (after mapping)")
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise UserError(f"translation pairs: got shape {pairs.shape} dtype {pairs.dtype}; expected an int array [m, 2] of (source row, target row)")
    if len(pairs) == 0:
        raise UserError("translation pairs: none given; expected at least one (source row, target row) pair")
    if pairs.min() < 0 or pairs[:, 0].max() >= X.shape[0] or pairs[:, 1].max() >= Y.shape[0]:
        raise UserError(f"translation pairs: rows out of range; expected source rows < {X.shape[0]} and target rows < {Y.shape[0]}")
    queries = np.unique(pairs[:, 0])
    Q = X[jnp.asarray(queries)]
    if kind == "nn":
        _, top = nearest_neighbors(Q, Y, 1, chunk_size=chunk_size, mesh=mesh)
    else:
        top = csls_knn(Q, Y, k=kk, topn=1, source=X, chunk_size=chunk_size, mesh=mesh)
    top = np.asarray(top)[:, 0].astype(np.int64)
    nt = Y.shape[0]
    gold = np.unique(pairs[:, 0].astype(np.int64) * nt + pairs[:, 1])
    correct = np.isin(queries.astype(np.int64) * nt + top, gold)
    return {"precision_at_1": float(correct.mean()), "queries": int(len(queries)), "method": method}


def retrieval_precision(X, Y, *, metric: str = "cosine", chunk_size=DEFAULT_CHUNK, mesh: Mesh | None = None) -> float:
    """P@1 of retrieving row i of Y for query row i of X among all rows of Y (XTREME Tatoeba, cosine NN)."""
    X, Y = _f32(X, "retrieval queries"), _f32(Y, "retrieval targets")
    if X.shape[0] != Y.shape[0] or X.shape[0] == 0:
        raise UserError(f"retrieval_precision: {X.shape[0]} queries and {Y.shape[0]} targets; expected the same non-zero number of aligned rows")
    _, idx = nearest_neighbors(X, Y, 1, metric=metric, chunk_size=chunk_size, mesh=mesh)
    return float(np.mean(np.asarray(idx)[:, 0] == np.arange(X.shape[0])))


def _index(words: Sequence[str], vecs, what: str) -> dict[str, int]:
    n = np.shape(vecs)[0]
    if len(words) != n:
        raise UserError(f"{what}: {len(words)} words but {n} vectors; expected one vector per word")
    index: dict[str, int] = {}
    for i, w in enumerate(words):
        index.setdefault(w, i)  # first occurrence wins, as MUSE's loader
    return index


def _dictionary_rows(src_words, src_vecs, tgt_words, tgt_vecs, dictionary) -> tuple[np.ndarray, dict]:
    si, ti = _index(src_words, src_vecs, "source vocabulary"), _index(tgt_words, tgt_vecs, "target vocabulary")
    rows = [(si[s], ti[t]) for s, t in dictionary if s in si and t in ti]
    total = len(dictionary)
    info = {"pairs_total": total, "pairs_used": len(rows), "coverage": len(rows) / total if total else 0.0}
    if not rows:
        raise UserError(
            f"dictionary: none of its {total} pairs has both words in the vocabularies "
            f"({len(si)} source, {len(ti)} target words); expected pairs of in-vocabulary words"
        )
    return np.asarray(rows, dtype=np.int64), info


def word_translation(src_words, src_vecs, tgt_words, tgt_vecs, dictionary, *, methods=("nn", "csls"), W=None,
                     k: int = 10, chunk_size=DEFAULT_CHUNK, mesh: Mesh | None = None) -> dict:
    """MUSE word-translation P@1 for each method on a (src, tgt) word dictionary.

    Every row of `tgt_vecs` is a candidate for every query, so the target vocabulary passed decides how
    hard the search is: MUSE passes the whole target embedding vocabulary; `xlplastic analyze` passes
    the dictionaries' target words unless its word translation candidates are "vocabulary" (see
    `runner.translation_vocabularies`).  `src_vecs` is CSLS's source population likewise.
    Pairs with a word outside the vocabularies are skipped and counted, as MUSE does.  Returns
    {"precision_at_1": {method: p}, "coverage", "pairs_total", "pairs_used", "queries"}.
    """
    rows, info = _dictionary_rows(src_words, src_vecs, tgt_words, tgt_vecs, dictionary)
    out: dict = {"precision_at_1": {}}
    for m in methods:
        r = translation_precision(src_vecs, tgt_vecs, rows, method=m, k=k, W=W, chunk_size=chunk_size, mesh=mesh)
        out["precision_at_1"][m] = r["precision_at_1"]
        out["queries"] = r["queries"]
    out.update(info)
    out.setdefault("queries", int(len(np.unique(rows[:, 0]))))
    return out


def fit_procrustes_on_dictionary(src_words, src_vecs, tgt_words, tgt_vecs, train_dictionary, normalize: bool = True,
                                 rounds: int = 5) -> dict:
    """Supervised Procrustes W on the in-vocabulary pairs of a train dictionary (e.g. MUSE `0-5000`).

    With `normalize`, both vocabularies go through `iterative_normalize` first, so W maps the normalised
    source space onto the normalised target space (normalise the same way before evaluating).
    Returns {"W", "pairs_total", "pairs_used", "coverage", "normalized"}.
    """
    rows, info = _dictionary_rows(src_words, src_vecs, tgt_words, tgt_vecs, train_dictionary)
    X, Y = _f32(src_vecs, "source vectors"), _f32(tgt_vecs, "target vectors")
    _same_dim(X, Y, "fit_procrustes_on_dictionary")
    if normalize:
        X, Y = iterative_normalize(X, rounds), iterative_normalize(Y, rounds)
    W = procrustes(X[jnp.asarray(rows[:, 0])], Y[jnp.asarray(rows[:, 1])])
    return {"W": W, **info, "normalized": bool(normalize)}
