"""`xlplastic prepare CONFIG`: the caches a run of CONFIG would build, built ahead on every core and process
(the packing itself is data/prepare.py; this module only resolves the config as `run` does)."""

from __future__ import annotations

import os
import time

from xlplastic.data.cache import read_index
from xlplastic.data.prepare import Share, build_corpora, cache_folder
from xlplastic.data.segments import describe
from xlplastic.errors import UserError


def prepare(cfg, run_dir, workers: int | None = None, verify: bool = True) -> list[dict]:
    """Builds the caches `xlplastic run` with this config and run folder would use (its tokenizer too,
    trained into the run folder if the config trains one), with every process of the launch and
    `workers` local processes each; prints one summary line per corpus and returns them."""
    import jax

    from xlplastic.data.run_tokenizer import prepare_tokenizer
    from xlplastic.hf_config import resolve as resolve_hf
    from xlplastic.paths import data_cache_dir
    from xlplastic.runtime import check_run_dir, log
    from xlplastic.stages import materialize_lab

    if cfg.pipeline is not None or cfg.task is not None:
        raise UserError("xlplastic prepare takes a masked-LM config (no `pipeline:` or `task:` section); expected the "
                        "config of a pretraining or language-adaptation run")
    t0 = time.perf_counter()
    run_dir = check_run_dir(run_dir)
    cfg = materialize_lab(resolve_hf(cfg), run_dir)
    tokenizer = prepare_tokenizer(cfg, run_dir)
    cache_dir = data_cache_dir(cfg.data.cache_dir, run_dir)  # where `run` looks
    share = Share(jax.process_index(), jax.process_count(), workers or os.cpu_count() or 1, progress=True)
    langs = build_corpora(cfg.data, tokenizer, cache_dir, share, verify=verify)
    wall = time.perf_counter() - t0
    out = []
    for corpus, packed in zip(cfg.data.corpora, langs):
        folder = cache_folder(corpus, cfg.data, cache_dir)
        index = read_index(folder)
        tokens = index["train_tokens"] + index["eval_rows"] * (cfg.data.seq_len - 2)
        row = dict(language=packed.language, folder=str(folder), documents=index["documents"],
                   train_tokens=index["train_tokens"], train_rows=index["train_rows"], eval_rows=index["eval_rows"],
                   shards=len(index["shards"]), tokens=tokens)
        out.append(row)
        log(f"prepared {describe(corpus)}: {row['documents']:,} documents, {row['train_tokens']:,} training tokens in "
            f"{row['train_rows']:,} rows ({row['shards']} shards) + {row['eval_rows']} held-out rows -> {folder}")
    log(f"prepare: {len(out)} corpora in {wall:.1f} s with {share.process_count} process(es) x {share.workers} "
        f"worker(s); `xlplastic run` with the same config and run folder uses them as they are")
    return out
