"""CKA at scale: xlplastic's streaming linear CKA over all L x L layer pairs vs the straightforward NumPy script.

Two synthetic "models" of `layers` layers x `width` features on `tokens` rows (tokens). The rows are
generated per batch on the device from a PRNG key (X layers: a random tanh network with big-mean
outlier dimensions; Y layers: a noisy random linear map of X's), so even millions of tokens never sit
in host or device memory at once. xlplastic side: `cka_update` per batch (the last one padded, same
compilation) then `cka_result`; compile excluded, the device synced after every step, data generation
excluded. NumPy peer, in the same run: every hidden state materialised in host memory, then the
published float64 reference in a loop over the L x L pairs (`feature_space_linear_cka`, or the Gram
form `cka(gram_linear(x), gram_linear(y))`). The peer's memory need is computed first; past the limit
it is recorded as "cannot run" with the reason instead of being attempted.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

from xlplastic.bench.common import host_memory_bytes

GB = 1e9


def numpy_peer_bytes(variant: str, tokens: int, layers: int, width: int) -> tuple[int, str]:
    """Peak host bytes of the NumPy peer (approximate, from shapes) and what they are for."""
    hidden = 2 * layers * tokens * width * 4  # both models' hidden states, float32 as a model emits them
    if variant == "feature":
        # per pair: float64 casts of x and y + their centred copies (the reference copies as it goes)
        work = 4 * tokens * width * 8
        what = f"all hidden states (2 x {layers} x {tokens} x {width} float32) + float64 working copies of a pair"
    elif variant == "gram":
        # two n x n float64 Grams, their centred copies, and the symmetry check's n x n temporaries
        work = 7 * tokens * tokens * 8 + 2 * tokens * width * 8
        what = f"n x n Gram matrices (n = {tokens}, float64, ~7 live) + all hidden states"
    else:
        raise ValueError(f"unknown NumPy peer {variant!r}")
    return hidden + work, what


def _generator(layers: int, width: int, batch: int, seed: int):
    """A jitted per-batch generator (params, index) -> (Xs [L, b, w], Ys [L, b, w]) and its params."""
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(seed)
    ka, kb, ko, kdata = jax.random.split(key, 4)
    scale = 1.0 / jnp.sqrt(jnp.float32(width))
    params = {
        "a": jax.random.normal(ka, (layers, width, width), jnp.float32) * (1.5 * scale),
        "b": jax.random.normal(kb, (layers, width, width), jnp.float32) * scale,
        # transformer-like outlier dimensions: a few features with large means
        "offset_x": jnp.zeros((width,), jnp.float32).at[: max(1, width // 64)].set(20.0),
        "offset_y": jax.random.normal(ko, (width,), jnp.float32) * 5.0,
    }

    @jax.jit
    def make(params, index):
        k = jax.random.fold_in(kdata, index)
        k0, kx, ky = jax.random.split(k, 3)
        h0 = jax.random.normal(k0, (batch, width), jnp.float32)
        noise_x = 0.3 * jax.random.normal(kx, (layers, batch, width), jnp.float32)

        def layer(h, inp):
            a, noise = inp
            h = jnp.tanh(h @ a) + noise
            return h, h

        _, xs = jax.lax.scan(layer, h0, (params["a"], noise_x))
        ys = jnp.einsum("lbd,lde->lbe", xs, params["b"])
        ys = ys + 0.5 * jax.random.normal(ky, ys.shape, jnp.float32)
        return xs + params["offset_x"], ys + params["offset_y"]

    return make, params


def run_cka_bench(
    tokens: int,
    layers: int = 13,
    width: int = 768,
    batch: int = 8192,
    numpy_peer: str = "auto",
    seed: int = 0,
    numpy_memory_limit_gb: float | None = None,
    debiased: bool = False,
) -> dict[str, Any]:
    """Times streaming linear CKA over all layer pairs on `tokens` rows, with the NumPy peer side by side.

    numpy_peer: "auto" (= "feature"), "feature", "gram" or "none". numpy_memory_limit_gb: the peer runs
    only if its computed need fits (default: 70% of the machine's physical RAM). Returns a JSON-ready dict.
    """
    import jax
    import numpy as np

    from xlplastic.analysis import numpy_reference as ref
    from xlplastic.analysis.cka import cka_init, cka_result, cka_state_bytes, cka_update

    if tokens < 4:
        raise ValueError("tokens must be >= 4 (the debiased estimator needs n > 3)")
    variant = {"auto": "feature"}.get(numpy_peer, numpy_peer)
    if variant not in ("feature", "gram", "none"):
        raise ValueError(f"numpy_peer must be auto, feature, gram or none, not {numpy_peer!r}")
    batch = min(batch, tokens)
    num_batches = -(-tokens // batch)
    host_bytes = host_memory_bytes()
    if numpy_memory_limit_gb is not None:
        limit_gb = numpy_memory_limit_gb
    else:
        limit_gb = 0.7 * host_bytes / GB if host_bytes else float("inf")

    dev = jax.devices()[0]
    result: dict[str, Any] = {
        "benchmark": "cka",
        "tokens": tokens,
        "layers": layers,
        "width": width,
        "batch": batch,
        "num_batches": num_batches,
        "debiased": debiased,
        "seed": seed,
        "device": str(dev),
        "platform": dev.platform,
        "device_kind": getattr(dev, "device_kind", None),
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "host": platform.node(),
        "host_cpus": os.cpu_count(),
        "host_memory_gb": round(host_bytes / GB, 2) if host_bytes else None,
    }

    # Does the NumPy peer fit? Decide before materialising anything.
    peer_hidden = None
    if variant == "none":
        result["numpy"] = {"status": "skipped"}
    else:
        need, what = numpy_peer_bytes(variant, tokens, layers, width)
        peer_info = {"variant": variant, "needs_gb": round(need / GB, 3), "limit_gb": round(limit_gb, 3)}
        if need / GB > limit_gb:
            machine = f"{host_bytes / GB:.1f} GB" if host_bytes else "unknown"
            peer_info.update(
                status="cannot run",
                reason=f"needs {need / GB:.3g} GB for {what}; limit {limit_gb:.3g} GB, machine has {machine}",
            )
            result["numpy"] = peer_info
        else:
            peer_info["status"] = "pending"
            result["numpy"] = peer_info
            shape = (layers, tokens, width)
            peer_hidden = (np.empty(shape, np.float32), np.empty(shape, np.float32))

    make, params = _generator(layers, width, batch, seed)

    # Compile (and run once) outside the timing: generator, update with a traced row count, result.
    t0 = time.perf_counter()
    xb, yb = make(params, 0)
    warm = cka_update(cka_init(layers, width, layers, width), xb, yb, batch)
    jax.block_until_ready(cka_result(warm, debiased=debiased))
    del warm
    compile_s = time.perf_counter() - t0

    state = cka_init(layers, width, layers, width)
    update_s = generate_s = 0.0
    for i in range(num_batches):
        t0 = time.perf_counter()
        xb, yb = jax.block_until_ready(make(params, i))
        valid = min(batch, tokens - i * batch)
        generate_s += time.perf_counter() - t0
        if peer_hidden is not None:  # the peer's copy of every hidden state (host, outside the timing)
            peer_hidden[0][:, i * batch : i * batch + valid] = np.asarray(xb[:, :valid])
            peer_hidden[1][:, i * batch : i * batch + valid] = np.asarray(yb[:, :valid])
        t0 = time.perf_counter()
        state = jax.block_until_ready(cka_update(state, xb, yb, valid))
        update_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = np.asarray(jax.block_until_ready(cka_result(state, debiased=debiased)), np.float64)
    result_s = time.perf_counter() - t0
    wall = update_s + result_s

    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    peak = stats.get("peak_bytes_in_use") if stats else None
    pairs = layers * layers
    flops = 2 * tokens * (pairs * width * width + 2 * layers * width * width + pairs * (2 * width + 1))
    result["xlplastic"] = {
        "wall_s": wall,
        "update_s": update_s,
        "result_s": result_s,
        "compile_s": compile_s,
        "generate_s": generate_s,
        "tokens_per_s": tokens / wall if wall > 0 else None,
        "flops": flops,
        "tflops_per_s": flops / wall / 1e12 if wall > 0 else None,
        "peak_device_bytes": peak,
        "memory_source": (
            "device.memory_stats()['peak_bytes_in_use']" if peak is not None else "shapes (memory_stats unavailable)"
        ),
        "stats_bytes": cka_state_bytes(layers, width, layers, width),
        "batch_bytes": 2 * layers * batch * width * 4,
        "cka_diagonal": [float(v) for v in np.diag(ours)],
        "cka_min": float(ours.min()),
        "cka_max": float(ours.max()),
    }
    del state

    result["max_abs_diff"] = None
    result["speedup"] = None
    if peer_hidden is not None:
        hx, hy = peer_hidden
        t0 = time.perf_counter()
        kernel = "linear" if variant == "feature" else "linear_gram"
        theirs = ref.cka_matrix(hx, hy, kernel=kernel, debiased=debiased)
        peer_s = time.perf_counter() - t0
        result["numpy"].update(status="ok", wall_s=peer_s, tokens_per_s=tokens / peer_s if peer_s > 0 else None)
        result["max_abs_diff"] = float(np.abs(theirs - ours).max())
        result["speedup"] = peer_s / wall if wall > 0 else None
    result["cka"] = ours.tolist()
    return result


def _fmt_bytes(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f} MiB"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlplastic bench analysis", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[100_000], help="row counts to run (several allowed)")
    p.add_argument("--layers", type=int, default=13)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--batch", type=int, default=8192, help="rows per streaming update")
    p.add_argument("--numpy-peer", choices=("auto", "feature", "gram", "none"), default="auto")
    p.add_argument("--numpy-memory-limit-gb", type=float, default=None, help="default: 70%% of physical RAM")
    p.add_argument("--debiased", action="store_true", help="debiased (unbiased-HSIC) CKA on both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    from xlplastic.bench.common import check_json_path, write_json

    args = build_parser().parse_args(argv)
    check_json_path(args.json)
    runs = []
    for n in args.tokens:
        runs.append(
            run_cka_bench(
                n,
                layers=args.layers,
                width=args.width,
                batch=args.batch,
                numpy_peer=args.numpy_peer,
                seed=args.seed,
                numpy_memory_limit_gb=args.numpy_memory_limit_gb,
                debiased=args.debiased,
            )
        )
    first = runs[0]
    print(
        f"linear CKA, {args.layers} x {args.layers} layer pairs, width {args.width}, batch {args.batch}, "
        f"{'debiased' if args.debiased else 'biased'}; device {first['device']}"
    )
    header = (
        f"{'tokens':>10} {'xlplastic s':>12} {'tok/s':>12} {'peak dev mem':>13} {'stats':>11} "
        f"{'numpy s':>10} {'tok/s':>10} {'max |diff|':>11}"
    )
    print(header)
    for r in runs:
        x, npy = r["xlplastic"], r["numpy"]
        peak = x["peak_device_bytes"]
        if npy.get("status") == "ok":
            peer = f"{npy['wall_s']:>10.3f} {npy['tokens_per_s']:>10.0f} {r['max_abs_diff']:>11.2e}"
        else:
            peer = f"{npy.get('status', '-'):>10} {'-':>10} {'-':>11}"
        print(
            f"{r['tokens']:>10} {x['wall_s']:>12.3f} {x['tokens_per_s']:>12.0f} {_fmt_bytes(peak):>13} "
            f"{_fmt_bytes(x['stats_bytes']):>11} {peer}"
        )
        if npy.get("status") == "cannot run":
            print(f"{'':>10} numpy: {npy['reason']}")
    write_json(args.json, {"benchmark": "cka", "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
