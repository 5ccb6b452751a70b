"""Data layer: sources, synthetic language, tokenizers, packing, caching and the step sampler."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from xlplastic.config import CorpusConfig, DataConfig, TokenizerConfig
from xlplastic.data.cache import ShardedRows
from xlplastic.data.pipeline import PackedLanguage, StepSampler, build_corpora, language_weights, pack_documents
from xlplastic.data.sources import iter_texts
from xlplastic.data.synthetic import CLASSES, generate, generate_corpus
from xlplastic.data.tokenizers import load_tokenizer, special_tokens, train_tokenizer
from xlplastic.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHARED_TEXT = REPO.parent / "shared" / "data" / "text"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return generate_corpus(2000, 300, 0)


@pytest.fixture(scope="module")
def bpe(texts):
    return train_tokenizer(texts, TokenizerConfig(kind="bpe", vocab_size=1000))


def _fake_lang(name: str, n: int, seq_len: int = 4, n_eval: int = 2) -> PackedLanguage:
    """Rows whose first token is their own row index, so sampled rows can be checked."""
    train = np.zeros((n, seq_len), np.int32)
    train[:, 0] = np.arange(n)
    return PackedLanguage(name, train, np.full((n_eval, seq_len), 7, np.int32), n * seq_len)


# ---------------------------------------------------------------------------------------------
# synthetic language


def test_synthetic_is_deterministic_and_tagged():
    a, b = generate(200, 120, 3), generate(200, 120, 3)
    assert a == b
    assert generate_corpus(50, 120, 3) != generate_corpus(50, 120, 4)
    for words, tags in zip(a.sentences, a.tags):
        assert 8 <= len(words) <= 30 and len(words) == len(tags)
        assert set(tags) <= set(CLASSES)
    vocab = {w for s in a.sentences for w in s}
    assert all(w.isalpha() and w.islower() for w in vocab)


def test_synthetic_words_within_a_class_differ_in_context():
    """Same-class words must not be exchangeable: their next-tag distributions differ."""
    c = generate(3000, 100, 0)
    nxt: dict[str, np.ndarray] = {}
    for words, tags in zip(c.sentences, c.tags):
        for w, t in zip(words[:-1], tags[1:]):
            nxt.setdefault(w, np.zeros(len(CLASSES)))[CLASSES.index(t)] += 1
    tag_of = {w: t for s, ts in zip(c.sentences, c.tags) for w, t in zip(s, ts)}
    frequent = [w for w, v in nxt.items() if v.sum() > 200]
    by_class: dict[str, list[str]] = {}
    for w in frequent:
        by_class.setdefault(tag_of[w], []).append(w)
    words = max(by_class.values(), key=len)
    assert len(words) >= 2
    p = [nxt[w] / nxt[w].sum() for w in words[:2]]
    assert np.abs(p[0] - p[1]).sum() > 0.2  # total-variation-like gap well above sampling noise


# ---------------------------------------------------------------------------------------------
# sources


def test_text_folder_and_jsonl(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("two\n")
    (tmp_path / "d" / "a.txt").write_text("  one  \n\n")
    assert list(iter_texts(CorpusConfig(kind="text", path="d"), data_dir=str(tmp_path))) == ["one", "two"]
    (tmp_path / "x.jsonl").write_text('{"text": "a"}\n\n{"text": "b", "id": 2}\n{"text": "c"}\n')
    got = list(iter_texts(CorpusConfig(kind="jsonl", path=str(tmp_path / "x.jsonl"), max_lines=2)))
    assert got == ["a", "b"]


def test_hf_local_files(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "x.jsonl").write_text('{"body": "hello"}\n{"body": "world"}\n')
    got = list(iter_texts(CorpusConfig(kind="hf", path="x.jsonl", field="body", streaming=True), str(tmp_path)))
    assert got == ["hello", "world"]


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="nope.txt"):
        list(iter_texts(CorpusConfig(kind="text", path=str(tmp_path / "nope.txt"))))


def test_empty_file(tmp_path):
    (tmp_path / "e.txt").write_text("\n   \n")
    with pytest.raises(UserError, match="no non-empty text"):
        list(iter_texts(CorpusConfig(kind="text", path=str(tmp_path / "e.txt"))))


def test_non_utf8_names_file_and_line(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine\nalso fine\nbro\xffken\n")
    with pytest.raises(UserError, match=r"bad\.txt:3: not UTF-8"):
        list(iter_texts(CorpusConfig(kind="text", path=str(tmp_path / "bad.txt"))))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"m\.jsonl:2: not valid JSON"):
        list(iter_texts(CorpusConfig(kind="jsonl", path=str(tmp_path / "m.jsonl"))))
    (tmp_path / "f.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(UserError, match=r"f\.jsonl:2: no field `text`"):
        list(iter_texts(CorpusConfig(kind="jsonl", path=str(tmp_path / "f.jsonl"))))


def test_tfds_missing_says_how_to_install():
    try:
        import tensorflow_datasets  # noqa: F401

        pytest.skip("tensorflow-datasets is installed")
    except ImportError:
        pass
    with pytest.raises(UserError, match=r"xlplastic\[tfds\]"):
        list(iter_texts(CorpusConfig(kind="tfds", name="wiki40b/en")))


# ---------------------------------------------------------------------------------------------
# tokenizers


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece"])
def test_tokenizer_kinds_train_and_round_trip(kind, texts, tmp_path):
    import time

    t0 = time.perf_counter()
    tok = train_tokenizer(texts, TokenizerConfig(kind=kind, vocab_size=1000))
    assert time.perf_counter() - t0 < 2.0
    sp = special_tokens(tok)
    if kind == "wordpiece":
        assert (sp.pad, sp.unk, sp.bos, sp.eos, sp.mask) == (0, 1, 2, 3, 4)
        mask = "[MASK]"
    else:
        assert (sp.bos, sp.pad, sp.eos, sp.unk, sp.mask) == (0, 1, 2, 3, 4)
        mask = "<mask>"
    assert set(sp.all_ids) == {0, 1, 2, 3, 4}
    enc = tok.encode(f"{texts[0]} {mask}")
    assert enc.ids[-1] == sp.mask and sp.bos not in enc.ids and sp.eos not in enc.ids  # no post-processor
    assert tok.decode(enc.ids, skip_special_tokens=True).split() == texts[0].split()
    tok.save(str(tmp_path / "tokenizer.json"))
    again = load_tokenizer(tmp_path)
    assert again.encode(texts[1]).ids == tok.encode(texts[1]).ids and special_tokens(again) == sp


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "junk.json")


# ---------------------------------------------------------------------------------------------
# packing + corpora


def test_pack_layout():
    out = pack_documents([[10, 11, 12], [13], [], [14, 15, 16, 17, 18]], seq_len=6, bos=0, eos=2, pad=1)
    assert out.dtype == np.int32
    # stream: 10 11 12 2 13 2 14 15 16 17 18 2 -> chunks of 4, each wrapped in bos..eos
    assert out.tolist() == [[0, 10, 11, 12, 2, 2], [0, 13, 2, 14, 15, 2], [0, 16, 17, 18, 2, 2]]
    out = pack_documents([[10, 11]], seq_len=6, bos=0, eos=2, pad=1)
    assert out.tolist() == [[0, 10, 11, 2, 2, 1]]
    assert pack_documents([], 6, 0, 2, 1).shape == (0, 6)


def _data_cfg(tmp_path, **corpus) -> DataConfig:
    return DataConfig(corpora=[CorpusConfig(**corpus)], seq_len=32, eval_sequences=2)


def test_token_budget_and_cache(tmp_path, bpe):
    cfg = _data_cfg(tmp_path, kind="synthetic", max_tokens=3000)
    (lang,) = build_corpora(cfg, bpe, tmp_path / "cache")
    assert lang.num_tokens == 3000
    assert (~np.isin(lang.train, [0, 1, 2])).sum() == 3000  # the budget counts training tokens only
    assert lang.eval.shape == (2, 32) and lang.train.dtype == np.int32
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    again = build_corpora(cfg, bpe, tmp_path / "cache")[0]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == files
    assert isinstance(again.train, ShardedRows)  # read from the shard files by row id, not loaded
    np.testing.assert_array_equal(again.train, lang.train)
    np.testing.assert_array_equal(again.eval, lang.eval)
    other = build_corpora(_data_cfg(tmp_path, kind="synthetic", max_tokens=2000), bpe, tmp_path / "cache")[0]
    assert other.num_tokens == 2000 and len(list((tmp_path / "cache").iterdir())) == 2 * len(files)
    # the held-out rows are the same whatever the budget, and never overlap the training rows
    np.testing.assert_array_equal(other.eval, lang.eval)
    assert not set(map(bytes, lang.eval)) & set(map(bytes, lang.train))


def test_token_budget_short_warns(tmp_path, bpe, caplog):
    cfg = _data_cfg(tmp_path, kind="synthetic", synthetic_sentences=200, max_tokens=10**7)
    with caplog.at_level(logging.WARNING, logger="xlplastic.data.pipeline"):
        (lang,) = build_corpora(cfg, bpe, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fewer than max_tokens" in warnings[0]
    assert 0 < lang.num_tokens < 10**7


def test_corpus_too_small_is_named(tmp_path, bpe):
    (tmp_path / "tiny.txt").write_text("just one short line\n")
    with pytest.raises(UserError, match=r"corpus `xx`.*tiny\.txt.*expected at least 3"):
        build_corpora(_data_cfg(tmp_path, language="xx", kind="text", path=str(tmp_path / "tiny.txt")), bpe, tmp_path / "c")


def test_real_english_ud(tmp_path, bpe):
    if not (SHARED_TEXT / "en.ud.txt").is_file():
        pytest.skip("shared data folder absent")
    cfg = DataConfig(
        corpora=[CorpusConfig(language="en", kind="text", path="text/en.ud.txt", max_tokens=5000)],
        seq_len=64,
        eval_sequences=4,
        data_dir=str(SHARED_TEXT.parent),
    )
    (lang,) = build_corpora(cfg, bpe, tmp_path)
    assert lang.num_tokens == 5000
    rows = np.concatenate([lang.train, lang.eval])
    assert (~np.isin(lang.train, [0, 1, 2])).sum() == 5000  # training content tokens = the budget
    assert len(lang.eval) == 4 and len(rows) >= 5000 // 62
    assert (lang.train[:, 0] == 0).all() and (lang.train[:-1, -1] == 2).all()  # the last row may be padded
    assert (lang.eval[:, 0] == 0).all() and (lang.eval[:, -1] == 2).all()


# ---------------------------------------------------------------------------------------------
# sampler


def test_sampler_is_pure_function_of_step():
    langs = [_fake_lang("a", 50)]
    s1, s2 = StepSampler(langs, 8, seed=1, alpha=0.7), StepSampler(langs, 8, seed=1, alpha=0.7)
    b = s1.batch(17)
    np.testing.assert_array_equal(b["tokens"], s2.batch(17)["tokens"])  # fresh sampler, same step
    s1.batch(3)
    np.testing.assert_array_equal(b["tokens"], s1.batch(17)["tokens"])  # history does not matter
    assert not np.array_equal(s1.batch(18)["tokens"], b["tokens"])
    assert not np.array_equal(StepSampler(langs, 8, seed=2, alpha=0.7).batch(17)["tokens"], b["tokens"])
    assert b["tokens"].dtype == np.int32 and b["lang"].dtype == np.int32 and b["tokens"].shape == (8, 4)


def test_single_language_epoch_covers_each_sequence_once():
    n, B = 60, 4  # 15 steps per epoch
    s = StepSampler([_fake_lang("a", n)], B, seed=0, alpha=1.0)
    for epoch in range(3):
        rows = np.concatenate([s.global_rows(t)[1] for t in range(epoch * 15, (epoch + 1) * 15)])
        assert sorted(rows.tolist()) == list(range(n))
    e0 = np.concatenate([s.global_rows(t)[1] for t in range(15)])
    e1 = np.concatenate([s.global_rows(t)[1] for t in range(15, 30)])
    assert not np.array_equal(e0, e1)  # a fresh permutation each epoch


def test_language_shares_follow_alpha():
    sizes = [900, 100]
    w = language_weights(sizes, 0.7)
    expected = (np.array([0.9, 0.1]) ** 0.7) / ((np.array([0.9, 0.1]) ** 0.7).sum())
    np.testing.assert_allclose(w, expected)
    s = StepSampler([_fake_lang("a", 900), _fake_lang("b", 100)], 32, seed=0, alpha=0.7)
    langs = np.concatenate([s.global_rows(t)[0] for t in range(500)])
    np.testing.assert_allclose(np.bincount(langs, minlength=2) / len(langs), w, atol=0.002)
    # each language still walks whole epochs: every run of n draws is a permutation of its n rows
    picks = [s.global_rows(t) for t in range(200)]
    for l, n in ((0, 900), (1, 100)):
        rows = np.concatenate([r[g == l] for g, r in picks])
        assert len(rows) >= 2 * n
        for k in range(len(rows) // n):
            assert sorted(rows[k * n : (k + 1) * n].tolist()) == list(range(n))
    # the batch rows are those languages' rows
    b = s.batch(5)
    lang, row = s.global_rows(5)
    np.testing.assert_array_equal(b["tokens"][:, 0], row)
    np.testing.assert_array_equal(b["lang"], lang)


def test_many_languages_small_batch():
    langs = [_fake_lang(str(i), n) for i, n in enumerate([500, 200, 50, 20, 5])]
    s = StepSampler(langs, 4, seed=3, alpha=0.3)
    got = np.concatenate([s.global_rows(t)[0] for t in range(2000)])
    np.testing.assert_allclose(np.bincount(got, minlength=5) / len(got), s.weights, atol=0.002)


def test_process_slices_concatenate_to_global_batch():
    s = StepSampler([_fake_lang("a", 90), _fake_lang("b", 30)], 12, seed=5, alpha=0.5)
    full = s.batch(9)
    parts = [s.batch(9, process_index=p, process_count=3) for p in range(3)]
    for key in ("tokens", "lang"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])
    with pytest.raises(UserError, match="not divisible"):
        s.batch(0, 0, 5)


def test_eval_batches_are_fixed():
    s = StepSampler([_fake_lang("a", 10, n_eval=3), _fake_lang("b", 10, n_eval=2)], 4, seed=0, alpha=1.0)
    ev = s.eval_batches(2, 10)
    assert len(ev) == 3  # 5 eval rows -> 3 batches of 2 (last wraps)
    assert [b["lang"].tolist() for b in ev] == [[0, 1], [0, 1], [0, 0]]
    again = StepSampler(s.langs, 4, seed=9, alpha=1.0).eval_batches(2, 10)
    for a, b in zip(ev, again):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_streamed_packing_equals_whole_packing():
    """RowPacker flushing every few tokens gives exactly pack_documents' rows (bounded memory, same data)."""
    from xlplastic.data.pipeline import RowPacker

    rng = np.random.default_rng(0)
    for trial in range(30):
        docs = [rng.integers(5, 50, rng.integers(0, 12)).tolist() for _ in range(rng.integers(0, 15))]
        seq_len = int(rng.integers(3, 9))
        whole = pack_documents(docs, seq_len, 0, 2, 1)
        rows = []
        packer = RowPacker(seq_len, 0, 2, 1, rows.append, flush_tokens=int(rng.integers(1, 7)))
        for d in docs:
            packer.add(d)
        assert packer.finish() == len(whole)
        streamed = np.concatenate(rows) if rows else np.zeros((0, seq_len), np.int32)
        np.testing.assert_array_equal(streamed, whole, err_msg=f"trial {trial}")
