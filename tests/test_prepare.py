"""The sharded row cache and `xlplastic prepare` (issue 14): segment packing against a reference written
out here, the same bytes from 1, 2 and 4 jax.distributed processes (and from 1 or 2 local workers), a
run on a prepared cache trains exactly as one that built its own, a streamed source stops reading at its
token budget, and damaged or mismatched caches are one line each."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import QUIET, REPO, Background, cli_env, free_port, run_cli, run_cmd, train_rows
from xlplastic import cli
from xlplastic.config import CorpusConfig, DataConfig
from xlplastic.data.packing import RowPacker, SegmentParams, pack_segment, plan_segments
from xlplastic.data.prepare import Share, build_corpora

SPECIALS = type("SP", (), {"bos": 0, "pad": 1, "eos": 2})


# ---- packing per segment, against a reference that packs the whole stream in one loop


def _reference(segments: list[list[np.ndarray]], seq_len: int, eval_tokens: int, max_tokens, max_docs):
    """The definition: one stream of documents (each + separator); its first `eval_tokens` tokens are held
    out; training content tokens follow, at most `max_tokens` (the last document cut) of the first
    `max_docs` documents; the packer restarts (its last row padded) at every segment boundary."""
    held, rows, need, count, docs = [], [], eval_tokens, 0, 0
    for seg in segments:
        packer = RowPacker(seq_len, 0, 2, 1, rows.append)
        for ids in seg:
            if max_docs is not None and docs >= max_docs or max_tokens is not None and count >= max_tokens:
                break
            docs += 1
            stream = np.concatenate([ids, [2]]).astype(np.int32)
            if need > 0:
                held.append(stream[:need])
                need -= len(held[-1])
                ids = stream[len(held[-1]):-1]
                if len(ids) == 0:
                    continue
            if max_tokens is not None:
                ids = ids[: max_tokens - count]
            count += len(ids)
            packer.add(ids)
        packer.finish()
    train = np.concatenate(rows) if rows else np.zeros((0, seq_len), np.int32)
    return np.concatenate(held) if held else np.zeros(0, np.int32), train, count


@pytest.mark.parametrize("eval_tokens, max_tokens, max_docs", [(40, None, None), (300, None, None), (25, 500, None),
                                                               (25, None, 37), (0, 260, 50), (6, 10**6, None)])
def test_segments_pack_as_the_reference(eval_tokens, max_tokens, max_docs):
    rng = np.random.default_rng(0)
    segments = [[rng.integers(5, 50, size=rng.integers(0, 15)).astype(np.int32) for _ in range(rng.integers(1, 12))]
                for _ in range(9)]
    ref_held, ref_train, ref_count = _reference(segments, 8, eval_tokens, max_tokens, max_docs)
    lengths = [np.array([len(d) for d in s]) for s in segments]
    asked = []
    plan, train = plan_segments([(len(x), int(x.sum())) for x in lengths], lambda k: asked.append(k) or lengths[k],
                                eval_tokens, max_tokens, max_docs)
    starts = np.cumsum([0] + [len(x) + int(x.sum()) for x in lengths])[:-1]  # stream position of each segment
    cut = {len(plan) - 1} if plan[-1].doc_limit is not None else set()
    assert sorted(asked) == sorted({k for k in range(len(plan)) if starts[k] < eval_tokens} | cut)  # lengths read only there
    held, rows, count = [], [], 0
    for seg, params in zip(segments, plan):
        docs = seg[: params.doc_limit] if params.doc_limit is not None else seg
        out = pack_segment(iter(docs), params, 8, SPECIALS, rows.append)
        held.append(out.held)
        count += out.train_tokens
    np.testing.assert_array_equal(np.concatenate(held), ref_held)
    np.testing.assert_array_equal(np.concatenate(rows), ref_train)
    assert count == train == ref_count
    if len(plan) < len(segments):  # the plan stops at the segment a budget is reached in
        assert plan[-1].token_limit is not None or plan[-1].doc_limit is not None
    assert pack_segment(iter(segments[0]), SegmentParams(), 8, SPECIALS, rows.append).lengths.tolist() == [len(d) for d in segments[0]]


# ---- the CLI: 1, 2 and 4 processes give the same bytes


def _write_corpus(d: Path) -> None:
    from xlplastic.data.synthetic import generate_corpus

    lines = generate_corpus(6000, 200, 3)
    (d / "text").mkdir(parents=True)
    for i in range(2):  # a glob over two files
        (d / "text" / f"syn.{i}.txt").write_text("\n".join(lines[i * 3000:(i + 1) * 3000]) + "\n", encoding="utf-8")
    with open(d / "stream.jsonl", "w") as f:
        for line in lines:
            f.write(json.dumps({"text": line}) + "\n")


def _config(d: Path, tokenizer: Path, cache: Path, extra: str = "") -> Path:
    cfg = cache.parent / f"prep-{cache.name}.yaml"
    cfg.write_text(f"""
base: {REPO / 'configs' / 'tiny.yaml'}
name: prep
data:
  data_dir: {d}
  cache_dir: {cache}
  tokenizer: {{path: {tokenizer}}}
  segment_bytes: 16384
  corpora:
    - {{language: syn, kind: text, path: "text/syn.*.txt", max_tokens: 40000}}
    - {{language: xx, kind: text, path: text/syn.1.txt}}
{extra}""", encoding="utf-8")
    return cfg


def _tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def _prepare_cmd(cfg: Path, run_dir: Path, *args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "xlplastic.cli", "prepare", str(cfg), "--run-dir", str(run_dir), *args]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from xlplastic.data.synthetic import generate_corpus
    from xlplastic.data.tokenizers import train_tokenizer
    from xlplastic.config import TokenizerConfig

    d = tmp_path_factory.mktemp("prepare")
    _write_corpus(d)
    tok = train_tokenizer(iter(generate_corpus(6000, 200, 3)), TokenizerConfig(kind="bpe", vocab_size=400))
    tok.save(str(d / "tok.json"))
    env = cli_env(tmp_path_factory)
    caches = {}
    for n, workers in ((1, 2), (2, 1), (4, 1)):
        cache = d / f"cache{n}"
        cfg = _config(d, d / "tok.json", cache)
        if n == 1:
            done = run_cli(_prepare_cmd(cfg, d / f"run{n}", "--workers", str(workers)), env, timeout=180)
            outs = [done]
        else:
            port = free_port()
            procs = [Background(_prepare_cmd(cfg, d / f"run{n}", "--workers", "1", "--coordinator", f"localhost:{port}",
                                             "--num-processes", str(n), "--process-id", str(i)), env, d / "logs", f"p{n}-{i}")
                     for i in range(n)]
            try:
                outs = [p.wait(timeout=180) for p in procs]
            finally:
                for p in procs:
                    p.kill()
        for i, o in enumerate(outs):
            assert o.returncode == 0, f"{n} processes, process {i}:\n{o.stdout[-2000:]}\n{o.stderr[-3000:]}"
        caches[n] = (cache, outs[0])
    return d, env, caches


def test_same_bytes_from_1_2_and_4_processes(prepared):
    d, _, caches = prepared
    trees = {n: _tree(c) for n, (c, _) in caches.items()}
    assert trees[1] == trees[2] == trees[4]
    folders = sorted({k.split("/")[0] for k in trees[1]})
    assert len(folders) == 2 and not any(".parts" in k for k in trees[1])  # the work files are gone
    index = json.loads((caches[1][0] / folders[0] / "index.json").read_text())
    assert index["language"] == "syn" and index["train_tokens"] == 40000  # the budget, exactly
    assert len(index["shards"]) >= 3 and sum(s["rows"] for s in index["shards"]) == index["train_rows"]
    assert "40,000 training tokens" in caches[1][1].stdout and "2 worker(s)" in caches[1][1].stdout
    # rows read back by global row id across shards equal the shard files side by side
    from xlplastic.data.cache import open_cache

    packed = open_cache(caches[4][0] / folders[0], index["tokenizer_sha"], verify=True)
    whole = np.concatenate([np.load(caches[4][0] / folders[0] / s["file"]) for s in index["shards"]])
    ids = np.random.default_rng(0).integers(0, len(whole), 300)
    np.testing.assert_array_equal(packed.train[ids], whole[ids])
    assert (~np.isin(whole, [0, 1, 2])).sum() == 40000


def test_training_on_a_prepared_cache_equals_building_it_in_the_run(prepared, tmp_path):
    d, env, caches = prepared
    steps = ("--set", "train.steps=4", "--set", "checkpoint.every=0", "--set", "train.eval_every=0")
    cfg = _config(d, d / "tok.json", caches[4][0])
    on_prepared = run_cli(run_cmd(cfg, tmp_path / "a", *QUIET, *steps), env, timeout=180)
    assert on_prepared.returncode == 0, on_prepared.stderr[-3000:]
    assert "building the data cache" not in on_prepared.stdout  # used as it is
    own = _config(d, d / "tok.json", tmp_path / "own-cache")
    built = run_cli(run_cmd(own, tmp_path / "b", *QUIET, *steps), env, timeout=180)
    assert built.returncode == 0, built.stderr[-3000:]
    assert built.stdout.count("building the data cache") == 2 and "xlplastic prepare CONFIG" in built.stdout
    a, b = [r["loss"] for r in train_rows(tmp_path / "a")], [r["loss"] for r in train_rows(tmp_path / "b")]
    assert len(a) == 4 and a == b
    assert _tree(tmp_path / "own-cache") == _tree(caches[4][0])


# ---- in-process: budgets on a stream, bad caches


def _tokenizer(prepared):
    from xlplastic.data.tokenizers import load_tokenizer

    return load_tokenizer(prepared[0] / "tok.json")


def test_stream_stops_reading_at_its_budget(prepared, tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    from xlplastic.data import segments

    read = []

    def counted(corpus, data_dir=None, _texts=segments.sources.iter_texts):
        for t in _texts(corpus, data_dir):
            read.append(1)
            yield t

    monkeypatch.setattr(segments.sources, "iter_texts", counted)
    d = prepared[0]
    corpus = dict(language="syn", kind="hf", path=str(d / "stream.jsonl"), streaming=True)
    cfg = DataConfig(corpora=[CorpusConfig(**corpus, max_tokens=3000)], seq_len=32, eval_sequences=4, segment_docs=100)
    (lang,) = build_corpora(cfg, _tokenizer(prepared), tmp_path / "c", Share())
    assert lang.num_tokens == 3000 and len(lang.eval) == 4
    # a wave is 2 segments of 100 documents here: reading stops at the wave that packs the budget
    used = json.loads(next((tmp_path / "c").glob("syn-*/index.json")).read_text())["documents"]
    assert used <= len(read) <= 600, (used, len(read))  # of 6000 documents


def _cli_prepare(cfg: Path, run_dir: Path) -> int:
    return cli.main(["prepare", str(cfg), "--run-dir", str(run_dir), "--workers", "1"])


def _one_line(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("xlplastic: error: "), err[-3000:]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def copied(prepared, tmp_path):
    """A copy of the 1-process cache and its config, to damage."""
    d, _, caches = prepared
    shutil.copytree(caches[1][0], tmp_path / "cache")
    return _config(d, d / "tok.json", tmp_path / "cache"), tmp_path


def _syn_folder(cache: Path) -> Path:
    return next(p for p in cache.iterdir() if p.name.startswith("syn-"))


def test_cache_of_another_tokenizer_is_refused(prepared, tmp_path, capsys):
    """A cache folder is named by the tokenizer's file (or training settings): a file replaced by another
    tokenizer finds the old folder and is refused, not silently rebuilt beside it."""
    from xlplastic.config import TokenizerConfig
    from xlplastic.data.synthetic import generate_corpus
    from xlplastic.data.tokenizers import train_tokenizer

    d = prepared[0]
    shutil.copy(d / "tok.json", tmp_path / "tok.json")
    cfg = _config(d, tmp_path / "tok.json", tmp_path / "cache")
    cfg.write_text(cfg.read_text().replace("    - {language: xx, kind: text, path: text/syn.1.txt}\n", ""))
    assert _cli_prepare(cfg, tmp_path / "run") == 0
    capsys.readouterr()
    train_tokenizer(iter(generate_corpus(500, 50, 9)), TokenizerConfig(kind="bpe", vocab_size=300)).save(str(tmp_path / "tok.json"))
    _one_line(capsys, _cli_prepare(cfg, tmp_path / "run"), "built with another tokenizer", "syn-")


def test_missing_shard_is_named(copied, capsys):
    cfg, tmp = copied
    (_syn_folder(tmp / "cache") / "train-000001.npy").unlink()
    _one_line(capsys, _cli_prepare(cfg, tmp / "run"), "train-000001.npy", "missing")


def test_truncated_shard_is_named(copied, capsys):
    cfg, tmp = copied
    shard = _syn_folder(tmp / "cache") / "train-000002.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    _one_line(capsys, _cli_prepare(cfg, tmp / "run"), "train-000002.npy", "truncated")


def test_corpus_glob_matching_no_file(copied, capsys):
    cfg, tmp = copied
    cfg.write_text(cfg.read_text().replace("text/syn.*.txt", "text/nothing.*.txt"))
    _one_line(capsys, _cli_prepare(cfg, tmp / "run"), "nothing.*.txt", "matches no file")


def test_bench_data_small(tmp_path):
    """`xlplastic bench data` end to end at toy sizes: throughput per worker count, memory, the margins."""
    from xlplastic.bench import input_bench

    src = tmp_path / "src"
    src.mkdir()
    from xlplastic.data.synthetic import generate_corpus

    (src / "a.txt").write_text("\n".join(generate_corpus(800, 100, 1)) + "\n", encoding="utf-8")
    out = tmp_path / "data.json"
    assert cli.main(["bench", "data", "--json", str(out), "--text", str(src / "*.txt"), "--generate-mb", "1",
                     "--workers", "1", "--vocab", "300", "--seq", "64", "--segment-mb", "1", "--rows", "100000",
                     "--steps", "2", "--work", str(tmp_path)]) == 0
    r = json.loads(out.read_text())
    baseline, prep = r["prepare"]  # 1 process on 1 tokenizer thread, then --workers 1
    assert baseline["tokenizer_threads"] == 1 and prep["tokenizer_threads"] == "all cores"
    assert baseline["tokens"] == prep["tokens"] and baseline["rows"] == prep["rows"]  # the same corpus either way
    assert prep["input_bytes"] > 1 << 20 and prep["shards"] >= 2 and prep["tokens_per_s"] > 0
    assert prep["peak_rss_bytes"] >= prep["peak_anon_bytes"] > 0 and prep["cache_read_peak_anon_bytes"] > 0
    hosts = sorted({1} | {d["hosts"] for d in r["device"]})
    assert [f["hosts"] for f in prep["cache_read"]] == hosts  # batches from the real shards, whole and per host
    assert [f["hosts"] for f in r["sampler"]["per_host"]] == hosts
    assert all(f["batch_s_median"] > 0 for f in prep["cache_read"] + r["sampler"]["per_host"])
    assert {d["topology"] for d in r["device"]} == set(input_bench.TOPOLOGIES)
    assert all(d["step_s"] > 0 and d["hosts"] >= 1 and d["cache_read_margin_host_slice"] > 0 for d in r["device"])
    assert not list(tmp_path.glob("xlplastic-bench-data-*"))  # the generated file is not left behind
