"""Feistel shuffles: every epoch a permutation (exactly at small n, statistically at 10^9), uniform over keys,
a sampler over 10^9 rows in bounded memory, and a mid-epoch resume equal to the uninterrupted run."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from xlplastic.bench.data_bench import PermutationSampler, sampler_host_time, synthetic_languages
from xlplastic.data.permutation import FeistelPermutation
from xlplastic.data.pipeline import StepSampler

SMALL = [1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 31, 32, 33, 64, 97, 127, 128, 129, 1000, 1021, 1024, 4096, 4099, 65537]


@pytest.mark.parametrize("n", SMALL)
def test_every_key_gives_a_permutation_at_small_n(n):
    for key in ([0], [1, 2, 3], [2**64 - 1, 7]):
        out = FeistelPermutation(n, key)(np.arange(n))
        assert out.dtype == np.int64
        np.testing.assert_array_equal(np.sort(out), np.arange(n))
    if n >= 13:  # different keys, different orders (13! orders: a coincidence is out of the question)
        assert not np.array_equal(FeistelPermutation(n, [1])(np.arange(n)), FeistelPermutation(n, [2])(np.arange(n)))
        assert not np.array_equal(FeistelPermutation(n, [1])(np.arange(n)), np.arange(n))


def test_positions_outside_the_domain_are_refused_and_shapes_kept():
    p = FeistelPermutation(10, [3])
    with pytest.raises(IndexError):
        p([10])
    with pytest.raises(IndexError):
        p([-1])
    assert p(np.arange(10).reshape(2, 5)).shape == (2, 5) and p(np.zeros(0, np.int64)).shape == (0,)
    with pytest.raises(ValueError):
        FeistelPermutation(0, [1])


def _chi2(counts: np.ndarray, expected: float) -> float:
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("n, keys", [(5, 20000), (7, 12000), (16, 8000)])
def test_positions_are_uniform_over_keys(n, keys):
    """Where position i goes, over many keys: each of the n values about equally often. For uniform random
    permutations the chi-square over the n x n cells has mean n(n-1) and sd about sqrt(2n(n-1)); the limit is
    5 sd above (8 Feistel rounds on these 3-bit domains land 7 sd above at n = 5, a linear round function far more)."""
    counts = np.zeros((n, n))
    for k in range(keys):
        counts[np.arange(n), FeistelPermutation(n, [k, 99])(np.arange(n))] += 1
    mean = n * (n - 1)
    assert _chi2(counts, keys / n) < mean + 5 * math.sqrt(2 * mean)


def test_pairs_are_uniform_over_keys():
    """(perm(0), perm(1)) over 24000 keys at n = 16: the 240 ordered pairs about equally often (df 239)."""
    n, keys = 16, 24000
    pairs = np.array([FeistelPermutation(n, [k, 5])([0, 1]) for k in range(keys)])
    counts = np.bincount(pairs[:, 0] * n + pairs[:, 1], minlength=n * n).reshape(n, n)
    assert (np.diag(counts) == 0).all()  # never the same value twice
    off = counts[~np.eye(n, dtype=bool)]
    assert _chi2(off, keys / (n * (n - 1))) < 400


@pytest.mark.parametrize("n", [10**9, 2**30 + 3])  # 2^30 + 3 walks on [0, 2^31): the worst case, ~2 passes
def test_large_n_statistics(n):
    """1.5M positions (a consecutive run and random ones): in range, no duplicates, uniform over range
    buckets and residues (chi-square, df ~1000: mean ~1000, sd ~45), no correlation with input or neighbour."""
    p = FeistelPermutation(n, [2026, 12, 3])
    run = np.arange(987_654_321, 987_654_321 + 2**20)
    rand = np.unique(np.random.default_rng(0).integers(0, n, 2**19))
    rand = rand[(rand < run[0]) | (rand > run[-1])]
    out_run, out_rand = p(run), p(rand)
    out = np.concatenate([out_run, out_rand])
    assert out.min() >= 0 and out.max() < n
    assert len(np.unique(out)) == len(out)
    for buckets in (out * 1024 // n, out % 1000):
        counts = np.bincount(buckets)
        assert _chi2(counts, len(out) / len(counts)) < len(counts) + 8 * math.sqrt(2 * len(counts))
    assert abs(np.corrcoef(run, out_run)[0, 1]) < 0.01
    assert abs(np.corrcoef(out_run[:-1], out_run[1:])[0, 1]) < 0.01
    np.testing.assert_array_equal(p(run[:5]), out_run[:5])  # a position's image does not depend on the batch


def _language_streams(s: StepSampler, steps: range) -> list[np.ndarray]:
    """Rows each language draws, in draw order (slot order is each language's draw order)."""
    picks = [s.global_rows(t) for t in steps]
    return [np.concatenate([r[g == l] for g, r in picks]) for l in range(len(s.langs))]


def test_sampler_epochs_are_permutations_at_small_sizes():
    sizes = [1, 2, 13, 16, 31, 64]
    s = StepSampler(synthetic_languages(sizes, 4), 6, seed=11, alpha=0.5)
    for n, rows in zip(sizes, _language_streams(s, range(400))):
        epochs = len(rows) // n
        assert epochs >= 3, (n, len(rows))
        for e in range(epochs):
            np.testing.assert_array_equal(np.sort(rows[e * n : (e + 1) * n]), np.arange(n))
        if n >= 13:
            assert not np.array_equal(rows[:n], rows[n : 2 * n])  # a fresh order every epoch


def test_sampler_over_a_billion_rows_in_bounded_memory():
    """10^9 + 10^7 + 10^3 rows of 512 tokens, global batch 2048: construction and 60 batches (including both
    large languages' first epoch boundary) peak below 50 MB in tracemalloc; a full permutation of the
    largest language alone would be 8 GB."""
    sizes = [10**9, 10**7, 1000]
    langs = synthetic_languages(sizes, 512)
    B = 2048
    tracemalloc.start()
    try:
        s = StepSampler(langs, B, seed=3, alpha=0.7)
        boundaries = [int(n / (B * w)) for n, w in zip(sizes[:2], s.weights[:2])]  # ~ first epoch end
        steps = [*range(20), *range(boundaries[1] - 10, boundaries[1] + 10), *range(boundaries[0] - 10, boundaries[0] + 10)]
        drawn = {}
        for t in steps:
            b = s.batch(t)
            drawn[t] = (b["lang"], b["tokens"][:, 0].copy())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"sampler peak {peak / 2**20:.1f} MB"
    for t, (lang, first) in drawn.items():  # the gathered rows are the sampled ones, inside their language
        g_lang, rows = s.global_rows(t)
        np.testing.assert_array_equal(lang, g_lang)
        np.testing.assert_array_equal(first, rows)
        assert (rows < np.asarray(sizes)[lang]).all()
    for l in (0, 1):  # the windows straddle an epoch boundary: the epoch index changes inside them
        n, w = sizes[l], s.weights[l]
        window = range(boundaries[l] - 10, boundaries[l] + 10)
        counts = [int(np.floor(t * B * w)) for t in (window[0], window[-1] + 1)]
        assert counts[0] < n < counts[1], (l, counts)
        rows = np.concatenate([drawn[t][1][drawn[t][0] == l] for t in window])
        assert len(np.unique(rows)) >= len(rows) - B  # no repeats, apart from where a new epoch begins
    # a fresh sampler (a resumed host) gives the same batch at a deep step
    np.testing.assert_array_equal(StepSampler(langs, B, seed=3, alpha=0.7).batch(steps[-1])["tokens"][:, 0], drawn[steps[-1]][1])


def test_resume_mid_epoch_equals_an_uninterrupted_run():
    sizes = [97, 40, 1000]
    langs = synthetic_languages(sizes, 4)
    run = StepSampler(langs, 8, seed=7, alpha=0.5)
    uninterrupted = [run.batch(t) for t in range(90)]
    t0 = 37  # every language is mid-epoch here
    before = _language_streams(StepSampler(langs, 8, seed=7, alpha=0.5), range(t0))
    assert all(len(r) % n for r, n in zip(before, sizes)), [len(r) % n for r, n in zip(before, sizes)]
    resumed = StepSampler(langs, 8, seed=7, alpha=0.5)  # a new process that only knows the step
    for t in range(t0, 90):
        b = resumed.batch(t)
        np.testing.assert_array_equal(b["tokens"], uninterrupted[t]["tokens"])
        np.testing.assert_array_equal(b["lang"], uninterrupted[t]["lang"])
    # the interrupted epoch completes as a permutation across the resume point
    after = _language_streams(resumed, range(t0, 90))
    for n, a, z in zip(sizes[:2], before, after):
        joined = np.concatenate([a, z])
        e = len(a) // n
        np.testing.assert_array_equal(np.sort(joined[e * n : (e + 1) * n]), np.arange(n))


def test_sampler_bench_figures():
    """The micro-benchmark runs at a small size: same language layout on both sides, positive times, and the
    permutation sampler holds two epochs' permutations where the Feistel one holds nothing of size n."""
    rows = 20000
    r = sampler_host_time(rows=rows, batch=64, seq_len=8, steps=6)
    new, old = r["feistel"], r["permutation"]
    for side in (new, old):
        for key in ("index_s_median", "index_s_max", "batch_s_median", "batch_s_max", "first_index_s"):
            assert math.isfinite(side[key]) and side[key] > 0, key
    assert r["steps"][0] < rows // 64 <= r["steps"][-1]  # the timed steps cross the epoch boundary
    assert old["peak_bytes"] >= 2 * rows * 8 > new["peak_bytes"] * 4
    assert old["permutation_s"] > 0 and old["permutation_bytes"] == rows * 8
    langs = synthetic_languages([300, 50], 8)  # the comparison sampler differs only in the row order
    a, b = StepSampler(langs, 16, 1, 0.5), PermutationSampler(langs, 16, 1, 0.5)
    for t in (0, 5, 40):
        np.testing.assert_array_equal(a.global_rows(t)[0], b.global_rows(t)[0])
    for n, rows in zip((300, 50), _language_streams(b, range(60))):
        np.testing.assert_array_equal(np.sort(rows[:n]), np.arange(n))
