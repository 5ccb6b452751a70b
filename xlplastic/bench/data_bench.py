"""Input pipeline: the step sampler's host time and memory per global batch, Feistel vs full permutations.

Both samplers give the same language layout (the per-language block mixture is untouched); they differ in
how a language's epoch is shuffled:

* feistel (today's `StepSampler`): a keyed Feistel bijection per (language, epoch), O(rounds) per row,
  nothing of size n held;
* permutation (the sampler before issue 14): `np.random.default_rng(...).permutation(n)` per
  (language, epoch), cached (up to 2L+2 of them), paid in full at every epoch boundary on every host.

The corpus is a synthetic index (`RowIdRows`: n rows, nothing stored), so the figures are the sampler's
own: `index_s` is `global_rows` (which rows form the batch), `batch_s` adds the gather into a fresh
[B, seq_len] int32 array (a real memory map adds its page-cache/disk reads, the same for both samplers).
Memory is `tracemalloc`'s peak over construction and every draw (NumPy reports its buffers to it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
import tracemalloc
from collections import OrderedDict
from typing import Any

import numpy as np

from xlplastic.bench.common import check_json_path, write_json
from xlplastic.data.pipeline import PackedLanguage, StepSampler


class RowIdRows:
    """A synthetic packed corpus of n rows x seq_len whose first token is the row id; stores nothing of size n."""

    def __init__(self, n: int, seq_len: int):
        self.shape = (int(n), int(seq_len))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"rows outside [0, {self.shape[0]})")
        out = np.zeros((len(rows), self.shape[1]), dtype=np.int32)
        out[:, 0] = rows  # row ids up to 2^31 - 1 fit
        return out


def synthetic_languages(sizes: list[int], seq_len: int) -> list[PackedLanguage]:
    """One `PackedLanguage` per size, over `RowIdRows` (a 2-row held-out set each)."""
    return [PackedLanguage(f"l{i}", RowIdRows(n, seq_len), RowIdRows(2, seq_len), n * (seq_len - 2))
            for i, n in enumerate(sizes)]


class PermutationSampler(StepSampler):
    """The sampler before issue 14, for comparison: full permutations per (language, epoch), LRU-cached."""

    def __init__(self, langs, global_batch: int, seed: int, alpha: float):
        super().__init__(langs, global_batch, seed, alpha)
        self._perms: OrderedDict = OrderedDict()
        self._perms_size = 2 * len(langs) + 2  # a batch touches at most ~2 epochs of each language

    def _perm(self, lang: int, epoch: int):
        key = (lang, epoch)
        if key not in self._perms:
            rng = np.random.default_rng([self.seed, self._TAG_EPOCH, lang, epoch])
            self._perms[key] = rng.permutation(int(self.sizes[lang]))
            if len(self._perms) > self._perms_size:
                self._perms.popitem(last=False)
        self._perms.move_to_end(key)
        return self._perms[key].__getitem__


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _draws(sampler: StepSampler, steps: list[int]) -> dict[str, float]:
    """Per-step seconds of `global_rows` and of `batch` (fresh samplers see the first step cold)."""
    index = [_timed(lambda s=s: sampler.global_rows(s)) for s in steps]
    full = [_timed(lambda s=s: sampler.batch(s)) for s in steps]
    return {"index_s_median": float(np.median(index)), "index_s_max": float(np.max(index)),
            "batch_s_median": float(np.median(full)), "batch_s_max": float(np.max(full)),
            "first_index_s": index[0]}


def _peak_bytes(make, steps: list[int]) -> int:
    """tracemalloc peak over building a sampler and drawing `steps` (the sampler's own memory)."""
    tracemalloc.start()
    try:
        sampler = make()
        for s in steps:
            sampler.batch(s)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def sampler_host_time(rows: int = 10**8, batch: int = 2048, seq_len: int = 512, steps: int = 40,
                      seed: int = 0, with_permutation: bool = True) -> dict[str, Any]:
    """Host seconds and bytes per global batch of `batch` x `seq_len` over one language of `rows` rows.

    The timed steps straddle the first epoch boundary (half before, half after), where the permutation
    sampler builds its next permutation; `permutation_s` is that one `permutation(rows)` call alone.
    """
    langs = synthetic_languages([rows], seq_len)
    boundary = rows // batch
    span = [max(boundary - steps // 2, 0) + i for i in range(steps)]
    new = _draws(StepSampler(langs, batch, seed, 1.0), span)
    new["peak_bytes"] = _peak_bytes(lambda: StepSampler(langs, batch, seed, 1.0), span)
    result: dict[str, Any] = {"rows": rows, "batch": batch, "seq_len": seq_len, "steps": span,
                              "feistel": new, "date": _dt.date.today().isoformat()}
    if with_permutation:
        rng = np.random.default_rng([seed, StepSampler._TAG_EPOCH, 0, 0])
        old = _draws(PermutationSampler(langs, batch, seed, 1.0), span)
        old["permutation_s"] = _timed(lambda: rng.permutation(rows))
        old["permutation_bytes"] = rows * 8
        old["amortised_batch_s"] = old["batch_s_median"] + old["permutation_s"] * batch / rows
        old["peak_bytes"] = _peak_bytes(lambda: PermutationSampler(langs, batch, seed, 1.0), span)
        result["permutation"] = old
        result["epoch_boundary_stall_ratio"] = old["index_s_max"] / new["index_s_max"]
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xlplastic.bench.data_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10**8, help="rows in the (synthetic) corpus")
    p.add_argument("--batch", type=int, default=2048, help="global batch (sequences)")
    p.add_argument("--seq", type=int, default=512, help="sequence length")
    p.add_argument("--steps", type=int, default=40, help="timed steps around the first epoch boundary")
    p.add_argument("--no-permutation", action="store_true", help="skip the full-permutation sampler")
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    check_json_path(args.json)
    r = sampler_host_time(args.rows, args.batch, args.seq, args.steps, with_permutation=not args.no_permutation)
    print(json.dumps(r, indent=2))
    write_json(args.json, r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
