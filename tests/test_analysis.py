"""`xlplastic analyze` and the representations behind it: pooling is what it says, the pipeline of
CKA / retrieval / word translation / word alignment runs end to end on a lab model and on real data,
the training probe logs without stalling, and bad input gets one line."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_helpers import assert_one_line_error, cli_env
from xlplastic.analysis import linear_cka, procrustes, reps
from xlplastic.analysis.runner import analyze, dictionary_alignment
from xlplastic.config import AnalysisConfig, validate
from xlplastic.run import run
from xlplastic.stages import materialize_lab

LAB = {"words": 120, "sentences": 1200, "test_sentences": 80,
       "languages": [{"name": "syn"}, {"name": "half", "permute": 0.5, "seed": 2}]}
MODEL = dict(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, max_positions=32, dropout=0.0,
             attention_dropout=0.0, norm="pre")
ANALYSIS = {"parallel": "parallel.syn-half.tsv", "languages": ["syn", "half"], "max_sentences": 80,
            "alignment": "parallel.syn-half.align",
            "dictionaries": {"syn-half": {"train": "dict.syn-half.0-5000.txt", "test": "dict.syn-half.5000-6500.txt"}},
            "word_corpus": {"syn": "syn.train.txt", "half": "half.train.txt"}, "max_word_sentences": 1000,
            "batch_size": 16}


def _train(tmp, name: str, *, layers: int = 2, steps: int = 40, extra: dict | None = None):
    raw = {"name": name, "lab": LAB, "model": {**MODEL, "num_layers": layers},
           "data": {"corpora": [{"language": "syn", "kind": "text", "path": "syn.train.txt"},
                                {"language": "half", "kind": "text", "path": "half.train.txt"}],
                    "tokenizer": {"kind": "bpe", "vocab_size": 300}, "seq_len": 32, "eval_sequences": 4},
           "train": {"steps": steps, "batch_size": 16, "progress": False, "eval_batches": 1,
                     "optimizer": {"lr": 3e-3}, "schedule": {"kind": "linear", "warmup_steps": 4}},
           "analysis": ANALYSIS, **(extra or {})}
    cfg = materialize_lab(validate(raw), tmp)
    run(cfg, tmp / name)
    return cfg


@pytest.fixture(scope="module")
def lab_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("analysis")
    cfg = _train(d, "bi")
    _train(d, "deep", layers=3, steps=10)
    return d, cfg


def test_public_api_accepts_numpy_and_jax():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 8))
    Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert float(linear_cka(X, jnp.asarray(X @ Q))) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.asarray(procrustes(X, X @ Q)), Q, atol=1e-4)


def test_sentence_pooling_excludes_specials_and_matches_sharded(lab_models):
    d, cfg = lab_models
    m8 = reps.load_model(d / "bi")
    m1 = reps.load_model(d / "bi", devices=jax.devices()[:1])
    lines = (d / "lab" / "syn.valid.txt").read_text().splitlines()
    sents = [" ".join(l.split()[:3]) for l in lines[:5]]
    assert all(len(m1.tokenizer_for("syn").encode(s).ids) <= 30 for s in sents)  # no truncation
    v8 = reps.sentence_vectors(m8, sents, "syn", batch_size=8)
    v1 = reps.sentence_vectors(m1, sents, "syn", batch_size=2)
    assert v8.shape == (3, 5, 32)
    np.testing.assert_allclose(v8, v1, atol=2e-5)
    # by hand: the mean over the content tokens only (not <s>, </s> or padding)
    tok, sp = m1.tokenizer_for("syn"), m1.specials
    ids = [sp.bos, *tok.encode(sents[0]).ids, sp.eos]
    enc = m1.merge(m1.params)
    _, hs = enc.encode(jnp.asarray([ids]), jnp.asarray([len(ids)]), return_hidden=True)
    want = np.stack([np.asarray(h[0, 1:-1]).mean(0) for h in hs])
    np.testing.assert_allclose(v1[:, 0], want, atol=2e-5)


def test_word_types_average_their_occurrences(lab_models):
    d, _ = lab_models
    m = reps.load_model(d / "bi")
    sents = ["ba ka ba", "ka ba"]  # arbitrary words (unknown ones tokenise too)
    per, kept = reps.words_in_context(m, [s.split() for s in sents], "syn", batch_size=8)
    words, vecs = reps.word_type_vectors(m, sents, "syn", ["ba", "ka", "zz"], batch_size=8)
    assert words == ["ba", "ka"]
    ba = np.stack([per[0][:, 0], per[0][:, 2], per[1][:, 1]]).mean(0)
    np.testing.assert_allclose(vecs[:, 0], ba, atol=2e-5)


def test_analyze_lab_model_end_to_end(lab_models):
    d, cfg = lab_models
    out = d / "out"
    res = analyze([reps.load_model(d / "bi")], AnalysisConfig(**ANALYSIS), out, cfg.data.data_dir)
    saved = json.loads((out / "results.json").read_text())
    np.testing.assert_allclose(saved["cka"]["syn-half"]["matrix"], res["cka"]["syn-half"]["matrix"])
    m = np.array(saved["cka"]["syn-half"]["matrix"])
    assert m.shape == (3, 3) and np.all((m > 0) & (m <= 1.0 + 1e-6))
    r = saved["retrieval"]["syn-half"]["parallel"]
    assert len(r["direct"]) == 3 and all(0 <= p <= 1 for p in r["direct"] + r["procrustes"])
    w = saved["word_translation"]["syn-half"]
    assert 0 < w["coverage"] <= 1 and w["nn"] is not None and w["csls"] is not None
    assert {"static", "layer_0", "layer_2"} <= set(w["representations"])
    a = saved["word_alignment"]["syn-half"]
    assert a["pairs_test"] > 0 and len(a["direct"]) == 3
    # half's anchors are the same strings: with a shared vocabulary some words align trivially, the rest by context
    assert max(a["direct"]) > 0.3
    for f in ("cka_syn-half.png", "by_layer.png", "report.md"):
        assert (out / f).stat().st_size > 1000
    assert any(r["task"] == "cka" for r in saved["summary"])


def test_two_models_of_different_depth(lab_models):
    d, cfg = lab_models
    acfg = AnalysisConfig(**{**ANALYSIS, "languages": ["syn"], "dictionaries": {}, "alignment": None})
    res = analyze([reps.load_model(d / "bi"), reps.load_model(d / "deep")], acfg, d / "out2", cfg.data.data_dir)
    m = np.array(res["cka"]["bi:syn-deep:syn"]["matrix"])
    assert m.shape == (3, 4)
    assert any("3 layers" in n and "4" in n for n in res["notes"])
    assert len(res["retrieval"]["bi:syn-deep:syn"]["parallel"]["direct"]) == 3  # the layers both have


def test_dictionary_alignment_pairs_words_occurring_once():
    got = dictionary_alignment(["a b a c", "c d"], ["x y z", "w w z"], [("b", "y"), ("c", "z"), ("a", "x"), ("d", "w")])
    assert got == [[(1, 1), (3, 2)], [(0, 2)]]  # `a` twice, `w` twice: ambiguous, skipped


def test_analyze_cli_and_bad_input(lab_models, tmp_path_factory):
    d, cfg = lab_models
    env = cli_env(tmp_path_factory)
    cmd = [sys.executable, "-m", "xlplastic.cli", "analyze", str(d / "bi"), "--run-dir", str(d / "cli"),
           "--set", "analysis.dictionaries={}", "--set", "analysis.alignment=null"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((d / "cli" / "results.json").read_text())["cka"]["syn-half"]["matrix"]
    bad = d / "bad.txt"
    bad.write_text("one\ntwo\n")
    n_valid = len((d / "lab" / "syn.valid.txt").read_text().splitlines())
    for over, needles in [
        (["--set", "analysis.layers=[0,7]"], ["layer(s) [7] out of range", "layers 0..2"]),
        (["--set", "analysis.parallel=null", "--set", f"analysis.parallel_files={{syn: {d / 'lab/syn.valid.txt'}, half: {bad}}}"],
         ["syn.valid.txt", str(n_valid), "bad.txt", "2"]),
        (["--set", "analysis.alignment=missing.align"], ["missing.align: alignment file not found"]),
    ]:
        p = subprocess.run(cmd + over, env=env, capture_output=True, text=True, timeout=300)
        assert_one_line_error(p, *needles)


def test_oov_dictionary_reports_coverage(lab_models):
    d, cfg = lab_models
    test = d / "oov.txt"
    lines = (d / "lab" / "dict.syn-half.5000-6500.txt").read_text().splitlines()
    test.write_text("\n".join(lines + [f"notaword{i} nichtwort{i}" for i in range(len(lines))]) + "\n")
    acfg = AnalysisConfig(**{**ANALYSIS, "alignment": None, "dictionaries": {"syn-half": {"test": str(test)}}})
    res = analyze([reps.load_model(d / "bi")], acfg, d / "out3", cfg.data.data_dir)
    w = res["word_translation"]["syn-half"]
    assert w["representations"]["layer_1"]["coverage"] <= 0.5 + 1e-9  # half the pairs are out of vocabulary
    assert w["mapping"] == "none"  # no train dictionary: direct retrieval only


def test_training_probe_logs_cka_and_retrieval(tmp_path):
    _train(tmp_path, "probe", steps=12, extra={"analysis": {**ANALYSIS, "every": 5, "max_sentences": 40}})
    rows = [json.loads(l) for l in (tmp_path / "probe" / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in rows if "probe_cka_l0" in r]
    assert [r["step"] for r in probes] == [5, 10]
    assert all(0 < r["probe_cka_l2"] <= 1 and 0 <= r["probe_retrieval_l1"] <= 1 for r in probes)


def test_real_data_end_to_end(shared_data, tmp_path):
    """A small model trained on the real en/fr text, analysed on PUD parallel sentences, Tatoeba and MUSE."""
    raw = {"name": "real", "model": {**MODEL, "max_positions": 64},
           "data": {"data_dir": str(shared_data), "seq_len": 64, "eval_sequences": 4,
                    "corpora": [{"language": "en", "kind": "text", "path": "text/en.ud.txt", "max_lines": 2000},
                                {"language": "fr", "kind": "text", "path": "text/fr.ud.txt"}],
                    "tokenizer": {"kind": "bpe", "vocab_size": 2000}},
           "train": {"steps": 8, "batch_size": 16, "progress": False, "eval_batches": 1}}
    run(validate(raw), tmp_path / "real")
    acfg = AnalysisConfig(parallel="parallel/pud_en_fr_de_ru_zh.tsv", languages=["en", "fr"], max_sentences=120,
                          retrieval={"en-fr": ["tatoeba/tatoeba.fra-eng.eng", "tatoeba/tatoeba.fra-eng.fra"]},
                          dictionaries={"en-fr": {"train": "muse/en-fr.0-5000.txt", "test": "muse/en-fr.5000-6500.txt"}},
                          batch_size=32, layers=[0, 2])
    res = analyze([reps.load_model(tmp_path / "real")], acfg, tmp_path / "out", str(shared_data))
    assert np.array(res["cka"]["en-fr"]["matrix"]).shape == (2, 2)
    assert res["retrieval"]["en-fr"]["tatoeba.fra-eng"]["sentences"] == 1000
    w = res["word_translation"]["en-fr"]
    assert 0 < w["coverage"] < 1  # a small model's vocabulary keeps only some MUSE words as one token
    assert (tmp_path / "out" / "by_layer.png").is_file() and (tmp_path / "out" / "cka_en-fr.png").is_file()
