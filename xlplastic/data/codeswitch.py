"""Dictionary code-switching ("extra anchors", Conneau, Wu et al., 2020): words of one language replaced
by their translations inside its own sentences, so the two languages share more contexts.

Deterministic: the choices depend only on the seed and the text, block by block (a block is the
documents covering `block_words` words, about one batch), so a rebuilt data cache is identical.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from xlplastic.config import CodeSwitchConfig
from xlplastic.data.evalsets import read_muse_dictionary
from xlplastic.errors import UserError


def read_dictionary(path: Path, reverse: bool = False) -> dict[str, list[str]]:
    """word -> translations (file order) from a MUSE-format file (`src tgt` per line)."""
    out: dict[str, list[str]] = {}
    for a, b in read_muse_dictionary(path):
        src, tgt = (b, a) if reverse else (a, b)
        out.setdefault(src, [])
        if tgt not in out[src]:
            out[src].append(tgt)
    return out


def code_switch(texts: Iterable[str], cfg: CodeSwitchConfig, data_dir: str | None = None, segment: int = 0) -> Iterator[str]:
    """`texts` with dictionary words switched (whitespace-separated words; case-sensitive lookup,
    then the lower-cased word). `segment`: which packing segment of the corpus `texts` are (blocks
    start again in each, with their own draws), so segments can be switched in any order."""
    from xlplastic.data.sources import resolve_path

    if not (0.0 <= cfg.rate <= 1.0 and 0.0 <= cfg.max_share <= 1.0 and cfg.block_words >= 1):
        raise UserError(f"code_switch: rate {cfg.rate}, max_share {cfg.max_share}, block_words {cfg.block_words}; "
                        "expected rate and max_share in [0, 1] and block_words >= 1")
    table = read_dictionary(resolve_path(cfg.dictionary, data_dir), cfg.reverse)
    block: list[list[str]] = []
    words = 0
    index = 0
    for text in texts:
        block.append(text.split())
        words += len(block[-1])
        if words >= cfg.block_words:
            yield from _switch_block(block, words, table, cfg, (segment, index))
            block, words, index = [], 0, index + 1
    if block:
        yield from _switch_block(block, words, table, cfg, (segment, index))


def _switch_block(docs: list[list[str]], words: int, table: dict[str, list[str]], cfg: CodeSwitchConfig, index: tuple[int, int]):
    rng = np.random.default_rng([cfg.seed, 0xC0DE, *index])
    spots = [(d, i) for d, doc in enumerate(docs) for i, w in enumerate(doc) if w in table or w.lower() in table]
    picked = np.flatnonzero(rng.random(len(spots)) < cfg.rate)
    cap = int(cfg.max_share * words)
    if len(picked) > cap:
        picked = np.sort(rng.choice(picked, size=cap, replace=False))
    for k in picked:
        d, i = spots[k]
        w = docs[d][i]
        choices = table.get(w) or table[w.lower()]
        docs[d][i] = choices[int(rng.integers(len(choices)))]
    for doc in docs:
        yield " ".join(doc)
