"""CSLS word retrieval, vocab x vocab: xlplastic's chunked on-device kernel vs a straightforward NumPy peer.

Both sides solve the same problem in the same run: source vectors S (vocab x dim), targets T = S Q + noise
for a random orthogonal Q (word i translates to word i), S mapped by the Procrustes W fitted on the first
min(5000, vocab) pairs (the supervised MUSE set-up, so P@1 means something), then CSLS with neighbourhood k
(MUSE `csls_knn_k`) for `queries` source words against all targets, the source population being all of S W.

* xlplastic: `align.csls_knn`'s jitted program, compiled first (compile seconds reported apart), then run;
  memory from the compiled program's `memory_analysis()` (arguments + outputs + temporaries), the chunk
  buffers' bytes from their shapes, and the device's `memory_stats()` peak where the backend has one.
* NumPy: the full vocab x vocab float32 similarity matrix, `np.partition` for both top-k means, then argmax
  of 2 cos - r_T - r_S.  Its memory need (matrix + one partition copy + inputs) is computed first; above
  the limit (default 70% of physical RAM) it is recorded as "cannot run" with the reason.  Memory: the
  matrix's bytes and the growth of the process's peak RSS (`resource.getrusage`).
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import numpy as np

from xlplastic.bench.common import check_json_path, host_memory_bytes, write_json

DEFAULT_CHUNK = 4096


def make_problem(vocab: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, T): Gaussian source vectors and T = S @ random orthogonal + noise (float32)."""
    rng = np.random.default_rng(seed)
    S = rng.standard_normal((vocab, dim), dtype=np.float32)
    Qm, R = np.linalg.qr(rng.standard_normal((dim, dim)))
    Qm = (Qm * np.sign(np.diag(R))).astype(np.float32)
    T = S @ Qm + noise * rng.standard_normal((vocab, dim), dtype=np.float32)
    return S, T


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def numpy_need_bytes(vocab: int, dim: int, queries: int) -> dict[str, int]:
    sim = vocab * vocab * 4
    # peak: the similarity matrix + the larger of the partition copy (vocab x vocab) and the CSLS rows
    need = sim + max(sim, queries * vocab * 4) + 4 * vocab * dim * 4
    return {"similarity_matrix_bytes": sim, "estimated_need_bytes": need}


def numpy_csls(S: np.ndarray, T: np.ndarray, qidx: np.ndarray, k: int) -> np.ndarray:
    """The straightforward peer: unit rows, full similarity matrix, partition for the top-k means, argmax."""
    S = S / np.linalg.norm(S, axis=1, keepdims=True)
    T = T / np.linalg.norm(T, axis=1, keepdims=True)
    sim = S @ T.T  # (vocab, vocab) float32
    r_s = np.partition(sim, sim.shape[0] - k, axis=0)[-k:].mean(axis=0)  # each target's k nearest sources
    rows = sim[qidx]
    del sim
    r_t = np.partition(rows, rows.shape[1] - k, axis=1)[:, -k:].mean(axis=1)  # each query's k nearest targets
    rows *= 2
    rows -= r_t[:, None]
    rows -= r_s[None, :]
    return rows.argmax(axis=1)


def _jax_chunk_bytes(nq: int, nt: int, ns: int, k: int, chunk_size: int) -> int:
    """Bytes of the largest per-step buffers from their shapes: a qc x tc score block and its (qc, tc + k) value/id merge."""
    qc, tc = min(chunk_size, max(nq, nt)), min(chunk_size, max(nt, ns))
    return qc * tc * 4 + qc * (tc + k) * 8


def run_csls_bench(vocab: int = 50000, dim: int = 300, k: int = 10, queries: int | None = None,
                   chunk_size: int = DEFAULT_CHUNK, numpy_memory_limit_gb: float | None = None, seed: int = 0,
                   noise: float = 2.0, repeats: int = 1) -> dict[str, Any]:
    import jax

    from xlplastic.analysis import align

    nq = vocab if queries is None else int(queries)
    if not 1 <= nq <= vocab:
        raise SystemExit(f"csls bench: queries={queries}; expected 1..{vocab}")
    S, T = make_problem(vocab, dim, noise, seed)
    train = min(5000, vocab)
    t0 = time.perf_counter()
    W = np.asarray(align.procrustes(S[:train], T[:train]))
    procrustes_s = time.perf_counter() - t0
    S = S @ W
    rng = np.random.default_rng(seed + 1)
    qidx = np.arange(vocab) if nq == vocab else np.sort(rng.choice(vocab, nq, replace=False))
    phys = host_memory_bytes()
    limit = int(numpy_memory_limit_gb * 2**30) if numpy_memory_limit_gb is not None else (int(0.7 * phys) if phys else None)
    result: dict[str, Any] = {
        "benchmark": "csls_knn word retrieval",
        "vocab": vocab, "dim": dim, "k": k, "queries": nq, "chunk_size": chunk_size, "noise": noise, "seed": seed,
        "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
        "physical_memory_bytes": phys, "procrustes_pairs": train, "procrustes_s": procrustes_s,
    }

    # --- NumPy peer first (its peak-RSS growth is then not hidden by an earlier high-water mark)
    need = numpy_need_bytes(vocab, dim, nq)
    if limit is not None and need["estimated_need_bytes"] > limit:
        result["numpy"] = {
            "status": "cannot run",
            "reason": f"needs ~{need['estimated_need_bytes'] / 2**30:.1f} GiB (a {vocab}x{vocab} float32 similarity matrix "
                      f"and a partition copy) but the limit is {limit / 2**30:.2f} GiB",
            **need, "limit_bytes": limit,
        }
        np_idx = None
    else:
        rss0 = _max_rss_bytes()
        t0 = time.perf_counter()
        np_idx = numpy_csls(S, T, qidx, k)
        np_wall = time.perf_counter() - t0
        result["numpy"] = {
            "status": "ok", "wall_s": np_wall, "precision_at_1": float(np.mean(np_idx == qidx)),
            **need, "limit_bytes": limit, "rss_growth_bytes": max(0, _max_rss_bytes() - rss0),
        }

    # --- xlplastic: compile apart, then run the compiled program
    args, static = align._csls_args(S[qidx], T, S, k, 1, chunk_size)
    args = tuple(jax.device_put(a) for a in args)
    lowered = align._csls_jit.lower(*args, **static, mesh=None, with_scores=False)
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    walls = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        _, idx = compiled(*args)
        idx = np.asarray(jax.block_until_ready(idx))[:, 0]
        walls.append(time.perf_counter() - t0)
    mem: dict[str, Any] = {"chunk_buffers_bytes": _jax_chunk_bytes(nq, vocab, vocab, k, chunk_size),
                           "inputs_bytes": int(sum(a.size * a.dtype.itemsize for a in args))}
    try:
        ma = compiled.memory_analysis()
        mem.update(argument_bytes=int(ma.argument_size_in_bytes), output_bytes=int(ma.output_size_in_bytes),
                   temp_bytes=int(ma.temp_size_in_bytes))
        mem["peak_bytes"] = mem["argument_bytes"] + mem["output_bytes"] + mem["temp_bytes"]
    except Exception:  # noqa: BLE001 - not every backend reports it
        mem["peak_bytes"] = mem["inputs_bytes"] + mem["chunk_buffers_bytes"]
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        mem["device_peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
    result["xlplastic"] = {"status": "ok", "compile_s": compile_s, "wall_s": min(walls), "walls_s": walls,
                           "precision_at_1": float(np.mean(idx == qidx)), "memory": mem}

    if np_idx is not None:
        same = idx == np_idx
        result["indices_agree"] = bool(same.all())
        result["agreement"] = float(same.mean())
        result["speedup_vs_numpy"] = result["numpy"]["wall_s"] / result["xlplastic"]["wall_s"]
    else:
        result["indices_agree"] = None
        result["agreement"] = None
        result["speedup_vs_numpy"] = None
    return result


def _gib(b) -> str:
    return "-" if b is None else f"{b / 2**30:.3f} GiB"


def format_table(r: dict[str, Any]) -> str:
    x, n = r["xlplastic"], r["numpy"]
    lines = [
        f"CSLS (k={r['k']}) {r['queries']} queries x {r['vocab']} targets, dim {r['dim']}, chunk {r['chunk_size']}, "
        f"{r['backend']} ({r['device']})",
        f"{'':12} {'status':>10} {'compile s':>10} {'wall s':>10} {'P@1':>7} {'memory':>14}",
        f"{'xlplastic':12} {'ok':>10} {x['compile_s']:>10.2f} {x['wall_s']:>10.2f} {x['precision_at_1']:>7.4f} "
        f"{_gib(x['memory']['peak_bytes']):>14}",
    ]
    if n["status"] == "ok":
        lines.append(f"{'numpy':12} {'ok':>10} {'-':>10} {n['wall_s']:>10.2f} {n['precision_at_1']:>7.4f} "
                     f"{_gib(max(n['similarity_matrix_bytes'], n['rss_growth_bytes'])):>14}")
        lines.append(f"indices agree: {r['indices_agree']} ({r['agreement']:.4%}); speed-up x{r['speedup_vs_numpy']:.2f}")
    else:
        lines.append(f"{'numpy':12} {'cannot run':>10}  {n['reason']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlplastic bench csls", description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=50000)
    p.add_argument("--dim", type=int, default=300)
    p.add_argument("--k", type=int, default=10, help="CSLS neighbourhood size")
    p.add_argument("--queries", type=int, default=None, help="query words (default: the whole vocabulary)")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK)
    p.add_argument("--noise", type=float, default=2.0, help="std of the noise added to the mapped targets")
    p.add_argument("--numpy-memory-limit-gb", type=float, default=None, help="default: 70%% of physical RAM")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_json_path(args.json)
    r = run_csls_bench(vocab=args.vocab, dim=args.dim, k=args.k, queries=args.queries, chunk_size=args.chunk_size,
                       numpy_memory_limit_gb=args.numpy_memory_limit_gb, seed=args.seed, noise=args.noise,
                       repeats=args.repeats)
    print(format_table(r))
    write_json(args.json, r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
