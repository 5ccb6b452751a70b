"""`xlplastic bench data`: is the input pipeline fast enough for a TPU slice?

Two sides, per host:
* preparation (`xlplastic prepare`'s code path, data/prepare.py): tokens/s packing the shared text files
  plus a generated file of `--generate-mb` (lines of those files, each copy in its own shuffled order; not
  checked in): one process encoding on one thread (the per-core baseline), one process letting HF
  tokenizers use every core, and 2 worker processes; with the peak resident memory of the process tree;
* the step sampler: host seconds per global batch of 2048 x 512, over a synthetic index of 10^8 rows
  (data_bench.sampler_host_time: which rows, and the gather) and over the cache just prepared (real
  memory-mapped shards, `cache_read`); one host gathering the whole global batch, the worst case,
against the step time the FLOPs formula (plan.model_flops_per_step at RoBERTa-base scale) predicts for a
v5e / v5p slice at its peak bf16 rate: the lower bound of a step, so the most data a host must supply.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from xlplastic.bench.common import check_json_path, write_json

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = ("v5e-256", "v5p-128")


def generate_text(sources: list[str], out: Path, megabytes: int, seed: int = 0) -> int:
    """A text file of about `megabytes` MB: the sources' lines, each copy in a new shuffled order."""
    lines = [l for f in sources for l in Path(f).read_text(encoding="utf-8").splitlines() if l.strip()]
    rng = np.random.default_rng(seed)
    want, size = megabytes << 20, 0
    with open(out, "w", encoding="utf-8") as f:
        while size < want:
            block = "\n".join(lines[i] for i in rng.permutation(len(lines))) + "\n"
            f.write(block)
            size += len(block.encode("utf-8"))
    return out.stat().st_size


def _max_rss_bytes(who) -> int:
    return resource.getrusage(who).ru_maxrss * 1024  # Linux reports KiB


class PeakMemory:
    """Peak resident bytes of this process plus its children (the workers), polled from /proc (Linux):
    `peak` all resident pages, `peak_anon` the private ones (RssAnon). The difference is file pages,
    e.g. of memory-mapped shards: page cache the kernel can drop, not memory the pipeline holds."""

    def __init__(self, every_s: float = 0.05):
        import threading

        self.peak = self.peak_anon = 0
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _rss(pid: int) -> tuple[int, int]:
        """(resident, anonymous resident) bytes of one process; (0, 0) once it is gone."""
        try:
            with open(f"/proc/{pid}/status") as f:
                kb = {k: int(v.split()[0]) for k, v in (l.split(":", 1) for l in f if l.startswith(("VmRSS", "RssAnon")))}
            return kb.get("VmRSS", 0) * 1024, kb.get("RssAnon", 0) * 1024
        except (OSError, ValueError, IndexError):
            return 0, 0

    def _tree(self, pid: int) -> list[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = [int(c) for c in f.read().split()]
        except OSError:
            kids = []
        return [pid] + [k for c in kids for k in self._tree(c)]

    def sample(self) -> None:
        got = [self._rss(p) for p in self._tree(os.getpid())]
        self.peak = max(self.peak, sum(r for r, _ in got))
        self.peak_anon = max(self.peak_anon, sum(a for _, a in got))

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)


def _batch_times(sampler, steps: int, hosts: int) -> dict:
    """Median and max seconds of `sampler.batch` for process 0 of `hosts` (the first draw, which opens
    shards and builds the first blocks, is left out)."""
    sampler.batch(0, 0, hosts)
    times = []
    for s in range(1, steps + 1):
        t = time.perf_counter()
        sampler.batch(s, 0, hosts)
        times.append(time.perf_counter() - t)
    return {"hosts": hosts, "batch_s_median": float(np.median(times)), "batch_s_max": float(np.max(times))}


def cache_read_time(langs, batch: int, steps: int, hosts: tuple[int, ...] = (1,)) -> list[dict]:
    """Host seconds per step drawn by `StepSampler` from a real prepared cache (memory-mapped shards, just
    written, so mostly from the page cache), for one host taking the whole global batch and for a host of
    a slice of `hosts` hosts (its rows only)."""
    from xlplastic.data.pipeline import StepSampler

    return [_batch_times(StepSampler(langs, batch, 0, 1.0), steps, h) for h in hosts]


def prepare_throughput(files: list[str], tokenizer, workers: int, threads: bool, seq_len: int, segment_mb: int,
                       work: Path, read_steps: int = 0, hosts: tuple[int, ...] = (1,)) -> dict:
    """One cold build of a text corpus per file with `workers` local processes. With `threads` a lone
    process lets HF tokenizers encode each batch on every core (what `xlplastic prepare --workers 1`
    does); without, it encodes on one thread: the per-core baseline the process scaling is read against."""
    from xlplastic.config import CorpusConfig, DataConfig
    from xlplastic.data.prepare import Share, build_corpora

    corpora = [CorpusConfig(language=f"c{i}", kind="text", path=f) for i, f in enumerate(files)]
    cfg = DataConfig(corpora=corpora, seq_len=seq_len, eval_sequences=8, segment_bytes=segment_mb << 20)
    cache = work / f"cache-{workers}"
    shutil.rmtree(cache, ignore_errors=True)
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    if not threads:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by HF tokenizers at every batch
    try:
        t, cpu = time.perf_counter(), time.process_time()
        with PeakMemory() as mem:
            langs = build_corpora(cfg, tokenizer, cache, Share(workers=workers, progress=True))
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
    tokens = sum(l.num_tokens + len(l.eval) * (seq_len - 2) for l in langs)
    shards = sum(len(json.loads(p.read_text())["shards"]) for p in cache.glob("*/index.json"))
    out = {"workers": workers, "tokenizer_threads": "all cores" if threads and workers == 1 else 1,
           "wall_s": wall, "main_process_cpu_s": cpu, "tokens": tokens, "tokens_per_s": tokens / wall,
           "rows": sum(len(l.train) + len(l.eval) for l in langs), "shards": shards,
           "input_bytes": sum(os.path.getsize(f) for f in files), "peak_rss_bytes": mem.peak,
           "peak_anon_bytes": mem.peak_anon}
    if read_steps:
        with PeakMemory() as reading:
            out["cache_read"] = cache_read_time(langs, 2048, read_steps, hosts)
        # reading maps the shards: resident grows by the file pages touched (page cache), private memory does not
        out["cache_read_peak_rss_bytes"], out["cache_read_peak_anon_bytes"] = reading.peak, reading.peak_anon
    del langs
    shutil.rmtree(cache, ignore_errors=True)
    return out


def device_step(topology: str, batch: int = 2048, seq_len: int = 512, vocab: int = 50265) -> dict:
    """RoBERTa-base's executed FLOPs per step over the slice's peak bf16 FLOP/s: a step's lower bound."""
    from xlplastic.config import load_config
    from xlplastic.plan import model_flops_per_step, parse_topology

    cfg = load_config(REPO / "configs" / "roberta_base.yaml", [f"train.batch_size={batch}", f"data.seq_len={seq_len}"])
    topo = parse_topology(topology)
    flops = model_flops_per_step(cfg, vocab)["executed"]
    step = flops / (topo.devices * topo.chip.peak_bf16_flops)
    hosts = max(topo.devices // int(np.prod(topo.chips_per_host_bounds)), 1)
    return {"topology": topology, "chips": topo.devices, "hosts": hosts, "flops_per_step": flops, "step_s": step,
            "tokens_per_s_per_host": batch * seq_len / step / hosts, "rows_per_s_per_host": batch / step / hosts}


def run(args) -> dict[str, Any]:
    from xlplastic.bench.data_bench import sampler_host_time, synthetic_languages
    from xlplastic.config import CorpusConfig, TokenizerConfig
    from xlplastic.data.pipeline import StepSampler
    from xlplastic.data.sources import iter_texts
    from xlplastic.data.tokenizers import train_tokenizer

    sources = sorted(glob.glob(args.text))
    if not sources:
        raise SystemExit(f"--text {args.text}: matches no file")
    devices = [device_step(t) for t in TOPOLOGIES]
    hosts = (1, *sorted({d["hosts"] for d in devices}))
    work = Path(tempfile.mkdtemp(prefix="xlplastic-bench-data-", dir=args.work))
    try:
        big = work / "generated.txt"
        generated = generate_text(sources, big, args.generate_mb) if args.generate_mb else 0
        texts = (t for f in sources for t in iter_texts(CorpusConfig(kind="text", path=f)))
        tok = train_tokenizer(texts, TokenizerConfig(kind="bpe", vocab_size=args.vocab))
        files = sources + ([str(big)] if generated else [])
        runs = ([(1, False)] if args.single_thread_baseline else []) + [(w, True) for w in args.workers]
        prep = [prepare_throughput(files, tok, w, threads, args.seq, args.segment_mb, work,
                                   read_steps=args.steps if i == len(runs) - 1 else 0, hosts=hosts)
                for i, (w, threads) in enumerate(runs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    sampler = sampler_host_time(rows=args.rows, batch=2048, seq_len=512, steps=args.steps, with_permutation=False)
    langs = synthetic_languages([args.rows], 512)
    synthetic = [_batch_times(StepSampler(langs, 2048, 0, 1.0), args.steps, h) for h in hosts]
    real = next(p["cache_read"] for p in prep if "cache_read" in p)

    def at(figures: list[dict], h: int) -> float:
        return next(f["batch_s_median"] for f in figures if f["hosts"] == h)

    best = max(p["tokens_per_s"] for p in prep)
    return {
        "date": _dt.date.today().isoformat(), "machine": f"{os.cpu_count()}-core CPU", "text": sources,
        "generated_bytes": generated, "vocab": args.vocab, "seq_len": args.seq, "segment_mb": args.segment_mb,
        "prepare": prep,
        # getrusage's high-water marks count file pages too: the process's includes the shards mapped while
        # timing cache reads (see cache_read_peak_anon_bytes for what is private)
        "max_rss_bytes": {"process": _max_rss_bytes(resource.RUSAGE_SELF),
                          "largest_worker": _max_rss_bytes(resource.RUSAGE_CHILDREN)},
        "sampler": {"rows": args.rows, "batch_s_median": sampler["feistel"]["batch_s_median"],
                    "index_s_median": sampler["feistel"]["index_s_median"], "peak_bytes": sampler["feistel"]["peak_bytes"],
                    "per_host": synthetic},
        "device": [{**d,
                    # one host drawing the whole global batch (the worst case) and a host of the slice (its rows)
                    "sampler_margin_whole_batch": d["step_s"] / at(synthetic, 1),
                    "sampler_margin_host_slice": d["step_s"] / at(synthetic, d["hosts"]),
                    "cache_read_margin_whole_batch": d["step_s"] / at(real, 1),
                    "cache_read_margin_host_slice": d["step_s"] / at(real, d["hosts"]),
                    "prepare_margin": best / d["tokens_per_s_per_host"]} for d in devices],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlplastic bench data", description=__doc__.split("\n\n")[0])
    p.add_argument("--text", default=str(REPO.parent / "shared" / "data" / "text" / "*.txt"), help="glob of text files")
    p.add_argument("--generate-mb", type=int, default=2048, help="MiB of generated text added as one more corpus (0: none)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker processes to compare")
    p.add_argument("--no-single-thread-baseline", dest="single_thread_baseline", action="store_false",
                   help="skip the 1-process, 1-tokenizer-thread build (the per-core baseline)")
    p.add_argument("--vocab", type=int, default=32000, help="BPE vocabulary trained on the text files")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--segment-mb", type=int, default=64, help="data.segment_bytes in MiB")
    p.add_argument("--rows", type=int, default=10**8, help="rows of the sampler's synthetic corpus")
    p.add_argument("--steps", type=int, default=20, help="sampler steps timed")
    p.add_argument("--work", default=None, help="folder for the generated file and caches (default: the temp dir)")
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    check_json_path(args.json)
    r = run(args)
    print(json.dumps(r, indent=2))
    write_json(args.json, r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
