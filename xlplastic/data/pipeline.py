"""Tokenize, pack, cache and sample: corpora in, deterministic global batches out.

Why: a batch must be a pure function of (seed, step) so that resuming needs only the step and every
host can cut its own slice of the same global batch; packed corpora live in sharded .npy files
(data/cache.py) so a host only reads the rows it uses and a rerun skips tokenization.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from xlplastic.data.permutation import FeistelPermutation
from xlplastic.data.cache import PackedLanguage
from xlplastic.data.packing import RowPacker, pack_documents
from xlplastic.data.prepare import build_corpora
from xlplastic.errors import UserError

# The cache (packing, sharded layout, parallel preparation) lives in packing.py, cache.py and prepare.py;
# these names stay importable from here.
__all__ = ["PackedLanguage", "RowPacker", "StepSampler", "build_corpora", "language_weights", "pack_documents"]


# ----------------------------------------------------------------------------------------------
# Sampling


def language_weights(sizes: Sequence[int], alpha: float) -> np.ndarray:
    """p_l ∝ (n_l / Σn)^alpha (XLM-R): alpha < 1 up-samples small languages."""
    n = np.asarray(sizes, dtype=np.float64)
    if n.ndim != 1 or len(n) == 0 or (n <= 0).any():
        raise UserError(f"language sizes {list(sizes)}: expected one positive size per language")
    p = (n / n.sum()) ** alpha
    return p / p.sum()


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        if len(self) > self.size:
            self.popitem(last=False)
        return value


class StepSampler:
    """Global batch = pure function of (seed, step); no iterator state, so resume is just the step.

    Slots g = step*B + j are grouped in blocks of K slots (K a multiple of B). Block b holds language l
    q_l(b) = floor((b+1)K w_l) - floor(bK w_l) times (the largest language takes the remainder), so the
    count of l before block b is floor(bK w_l) in closed form and long-run shares equal the weights
    exactly. Slots are shuffled within a block by rng(seed, b). Each language walks epoch-wise
    permutations of its rows, epoch e keyed by (seed, l, e): every sequence once per epoch. The
    permutations are Feistel bijections (`data.permutation`): O(1) memory and O(rounds) per row, so
    host memory and epoch boundaries cost the same for 10^3 rows as for 10^9.
    """

    _TAG_BLOCK, _TAG_EPOCH = 1, 2

    def __init__(self, langs: list[PackedLanguage], global_batch: int, seed: int, alpha: float):
        if not langs:
            raise UserError("no corpora: expected at least one entry in data.corpora")
        if global_batch < 1:
            raise UserError(f"global batch is {global_batch}; expected at least 1")
        self.langs, self.B, self.seed = langs, global_batch, seed % (1 << 64)  # rng seeds are unsigned
        self.sizes = np.array([len(l.train) for l in langs], dtype=np.int64)
        self.weights = language_weights(self.sizes, alpha)
        L = len(langs)
        need = max(L * (L - 1), 1)  # guarantees the largest language's remainder quota is >= 0
        self.K = global_batch * -(-need // global_batch)
        self.big = int(np.argmax(self.weights))
        self._blocks = _LRU(8)

    # -- language layout -------------------------------------------------------------------------
    def _before(self, b: int) -> np.ndarray:
        """Slots of each language in blocks [0, b)."""
        c = np.floor(b * self.K * self.weights).astype(np.int64)
        c[self.big] = b * self.K - (c.sum() - c[self.big])
        return c

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(language, rank among that language's slots in this block) for every slot of block b."""

        def make():
            quota = self._before(b + 1) - self._before(b)
            labels = np.repeat(np.arange(len(self.langs)), quota)
            labels = np.random.default_rng([self.seed, self._TAG_BLOCK, b]).permutation(labels)
            order = np.argsort(labels, kind="stable")
            starts = np.concatenate([[0], np.cumsum(quota)[:-1]])
            rank = np.empty(self.K, dtype=np.int64)
            rank[order] = np.arange(self.K) - starts[labels[order]]
            return labels, rank

        return self._blocks.get_or(b, make)

    def _perm(self, lang: int, epoch: int) -> FeistelPermutation:
        return FeistelPermutation(int(self.sizes[lang]), [self.seed, self._TAG_EPOCH, lang, epoch])

    # -- public ----------------------------------------------------------------------------------
    def global_rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(lang_ids [B], row_ids [B]) of the global batch at `step` (rows index `langs[l].train`)."""
        if step < 0:
            raise UserError(f"step {step}: expected a non-negative step")
        g = step * self.B + np.arange(self.B, dtype=np.int64)
        blk, off = g // self.K, g % self.K
        lang = np.empty(self.B, dtype=np.int32)
        count = np.empty(self.B, dtype=np.int64)  # slots of the same language before this one
        for b in np.unique(blk):
            sel = blk == b
            labels, rank = self._block(int(b))
            lang[sel] = labels[off[sel]]
            count[sel] = self._before(int(b))[labels[off[sel]]] + rank[off[sel]]
        rows = np.empty(self.B, dtype=np.int64)
        for l in np.unique(lang):
            sel = lang == l
            epoch, pos = np.divmod(count[sel], self.sizes[l])
            out = np.empty(len(pos), dtype=np.int64)
            for e in np.unique(epoch):
                m = epoch == e
                out[m] = self._perm(int(l), int(e))(pos[m])
            rows[sel] = out
        return lang, rows

    @staticmethod
    def _slice(n: int, process_index: int, process_count: int) -> slice:
        if process_count < 1 or not 0 <= process_index < process_count:
            raise UserError(f"process {process_index} of {process_count}: expected 0 <= index < count")
        if n % process_count:
            raise UserError(f"batch of {n} sequences is not divisible by {process_count} processes; expected a multiple")
        per = n // process_count
        return slice(process_index * per, (process_index + 1) * per)

    def _gather(self, lang: np.ndarray, rows: np.ndarray, split: str) -> dict[str, np.ndarray]:
        tokens = np.empty((len(lang), self.langs[0].train.shape[1]), dtype=np.int32)
        for l in np.unique(lang):
            sel = np.flatnonzero(lang == l)
            order = np.argsort(rows[sel], kind="stable")  # sorted reads are kinder to a memory map
            tokens[sel[order]] = getattr(self.langs[l], split)[rows[sel][order]]
        return dict(tokens=tokens, lang=lang.astype(np.int32))

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
        """This process's contiguous slice of the global batch: tokens int32 [B/P, L], lang int32 [B/P]."""
        s = self._slice(self.B, process_index, process_count)
        lang, rows = self.global_rows(step)
        return self._gather(lang[s], rows[s], "train")

    def eval_batches(
        self, batch_size: int, num_batches: int, process_index: int = 0, process_count: int = 1
    ) -> list[dict[str, np.ndarray]]:
        """Fixed held-out batches: eval rows interleaved across languages, in order.

        At most enough batches to cover every eval row once; the last one wraps around to stay full.
        """
        s = self._slice(batch_size, process_index, process_count)
        n_eval = [len(l.eval) for l in self.langs]
        if sum(n_eval) == 0 or num_batches < 1:
            return []
        # round-robin: row i of every language, then row i+1, ...
        pairs = [(l, i) for i in range(max(n_eval)) for l in range(len(self.langs)) if i < n_eval[l]]
        n = min(num_batches, -(-len(pairs) // batch_size))
        idx = np.arange(n * batch_size) % len(pairs)
        lang = np.array([pairs[i][0] for i in idx], dtype=np.int32).reshape(n, batch_size)
        rows = np.array([pairs[i][1] for i in idx], dtype=np.int64).reshape(n, batch_size)
        return [self._gather(lang[k][s], rows[k][s], "eval") for k in range(n)]
