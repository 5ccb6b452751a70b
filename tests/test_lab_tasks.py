"""The structural lab tasks: labels are a function of the gold class sequence, balanced, deterministic,
parallel across languages, and readable by the task readers; the word-level tokenizer and the oracle's
vocabulary map give one row per word."""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pytest

from xlplastic.config import LabConfig, LabLanguageConfig as L
from xlplastic.data import lab_tasks
from xlplastic.data.lab import build_language, lab_grammar, write_lab
from xlplastic.data.phrase import MIN_WORDS, make_phrase_grammar, tags
from xlplastic.errors import UserError
from xlplastic.tasks.readers import read_task

N_TASK = 600  # task training rows per language (= sentences below TOPIC_TASK_MAX)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    cfg = LabConfig(words=150, sentences=N_TASK, test_sentences=90, seed=5,
                    languages=[L(name="src"), L(name="perm", permute=1.0, seed=2),
                               L(name="rev", permute=1.0, word_order="reverse", seed=3)])
    out = tmp_path_factory.mktemp("labtasks")
    return cfg, out, write_lab(cfg, out)


@functools.lru_cache(maxsize=None)
def _language(cfg_json: str, name: str):
    cfg = LabConfig.model_validate_json(cfg_json)
    grammar = lab_grammar(cfg)
    spec = next(s for s in cfg.languages if s.name == name)
    lang = build_language(grammar, spec)
    return grammar, spec, {w: i for i, w in enumerate(lang.surface)}


def _base_tags(cfg, name, text):
    """Gold (UPOS, Number) of a rendered sentence, back in base word order (the rule is stated there)."""
    grammar, spec, inv = _language(cfg.model_dump_json(), name)
    ids = [inv[w] for w in text.split()]
    return tags(grammar, ids[::-1] if spec.word_order == "reverse" else ids)


@pytest.mark.parametrize("name", ["src", "perm", "rev"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_nli_labels_follow_the_class_rule_and_are_balanced(lab, name, split):
    cfg, _, files = lab
    ex = read_task("classification", str(files[name][f"nli_{split}"]))
    assert len(ex) == (N_TASK if split == "train" else cfg.test_sentences)
    assert all(e.text_pair is not None for e in ex)  # premise + hypothesis, through the ordinary reader
    for e in ex:
        assert lab_tasks.nli_rule(_base_tags(cfg, name, e.text), _base_tags(cfg, name, e.text_pair)) == e.label
        assert len(e.text.split()) <= lab_tasks.TASK_MAX_LEN and len(e.text_pair.split()) <= lab_tasks.TASK_MAX_LEN
    counts = Counter(e.label for e in ex)
    assert set(counts) == set(lab_tasks.NLI_LABELS) and max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("name", ["src", "rev"])
def test_agreement_labels_follow_the_class_rule_and_are_balanced(lab, name):
    cfg, _, files = lab
    for split in ("train", "test"):
        ex = read_task("classification", str(files[name][f"agreement_{split}"]))
        assert all(e.text_pair is None for e in ex)
        for e in ex:
            assert lab_tasks.agreement_rule(_base_tags(cfg, name, e.text)) == e.label
        counts = Counter(e.label for e in ex)
        assert set(counts) == set(lab_tasks.AGREEMENT_LABELS) and max(counts.values()) - min(counts.values()) <= 1


def test_entailed_hypotheses_redraw_the_words(lab):
    """Entailment is a skeleton match, not a copy: most hypothesis words differ from the premise's."""
    _, _, files = lab
    ex = [e for e in read_task("classification", str(files["src"]["nli_train"])) if e.label == "entailment"]
    same = [np.mean([a == b for a, b in zip(e.text.split(), e.text_pair.split())]) for e in ex]
    assert np.mean(same) < 0.5


def test_test_sets_are_parallel_across_languages(lab):
    _, _, files = lab
    for task in ("nli_test", "agreement_test"):
        labels = {n: [e.label for e in read_task("classification", str(files[n][task]))] for n in ("src", "perm", "rev")}
        assert labels["src"] == labels["perm"] == labels["rev"]


def test_tasks_are_deterministic_and_seeded(tmp_path, lab):
    cfg, out, files = lab
    again = write_lab(cfg, tmp_path / "again")
    for k in ("nli_train", "nli_test", "agreement_train", "agreement_test"):
        assert again["perm"][k].read_bytes() == files["perm"][k].read_bytes()
    other = write_lab(cfg.model_copy(update={"seed": 6}), tmp_path / "other")
    assert other["src"]["nli_train"].read_bytes() != files["src"]["nli_train"].read_bytes()


def test_phrase_grammar_is_deterministic_and_exact_in_size():
    for words in (MIN_WORDS, 200, 1000):
        a, b = make_phrase_grammar(words, 3), make_phrase_grammar(words, 3)
        assert len(a.words) == words == len(set(a.words))
        assert a.words == b.words and np.array_equal(a.word_class, b.word_class)
        ids_a, len_a, top_a = a.sample_ids(50, np.random.default_rng(1))
        ids_b, len_b, top_b = b.sample_ids(50, np.random.default_rng(1))
        assert np.array_equal(ids_a, ids_b) and np.array_equal(len_a, len_b) and np.array_equal(top_a, top_b)
    assert make_phrase_grammar(200, 3).words != make_phrase_grammar(200, 4).words
    with pytest.raises(UserError, match="at least 48"):
        make_phrase_grammar(MIN_WORDS - 1, 0)


def test_agreement_is_learnable_from_number_only():
    """Singular and plural forms of one lemma are distinct word types, and singular is the more common
    number (a symmetric split would let relearning swap the two numbers without any loss)."""
    g = make_phrase_grammar(200, 0)
    freq = g.frequencies()
    sg, pl = g.forms["NOUN"][:, 0], g.forms["NOUN"][:, 1]
    assert freq[sg].sum() > 1.5 * freq[pl].sum()


def test_wordlevel_tokenizer_gives_one_token_per_lab_word(lab):
    from xlplastic.config import TokenizerConfig
    from xlplastic.data.tokenizers import train_tokenizer

    _, _, files = lab
    lines = files["perm"]["train"].read_text(encoding="utf-8").splitlines()
    tok = train_tokenizer(iter(lines), TokenizerConfig(kind="wordlevel", vocab_size=5000, min_frequency=1))
    words = {w for line in lines for w in line.split()}
    assert all(tok.token_to_id(w) is not None for w in words)
    enc = tok.encode(lines[0])
    assert len([t for t in enc.tokens if t in words]) == len(lines[0].split())


def test_vocabulary_map_follows_the_dictionary(lab):
    """The oracle's row map: specials by role, each target word to its source word's row, unknowns to unk."""
    from xlplastic.assemble import vocabulary_map
    from xlplastic.config import TokenizerConfig
    from xlplastic.data.tokenizers import special_tokens, train_tokenizer

    cfg, out, files = lab
    tc = TokenizerConfig(kind="wordlevel", vocab_size=5000, min_frequency=1)
    src = train_tokenizer(iter(files["src"]["train"].read_text(encoding="utf-8").splitlines()), tc)
    tgt = train_tokenizer(iter(files["perm"]["train"].read_text(encoding="utf-8").splitlines()), tc)
    pairs = [l.split() for f in ("dict_train", "dict_test") for l in files["src-perm"][f].read_text(encoding="utf-8").splitlines()]
    t2s = {t: [s] for s, t in pairs[1:]}  # drop one pair: that word maps to unk
    size = tgt.get_vocab_size() + 3  # padded vocabulary: rows past the tokenizer go to unk
    index, missing = vocabulary_map(src, tgt, t2s, size)
    s_sp, t_sp = special_tokens(src), special_tokens(tgt)
    assert index[t_sp.mask] == s_sp.mask and index[t_sp.pad] == s_sp.pad and index[t_sp.eos] == s_sp.eos
    dropped = tgt.token_to_id(pairs[0][1])
    assert (dropped is None and missing == 0) or (missing == 1 and index[dropped] == s_sp.unk)
    for s, t in pairs[1:]:
        if (i := tgt.token_to_id(t)) is not None and src.token_to_id(s) is not None:
            assert index[i] == src.token_to_id(s)
    assert (index[tgt.get_vocab_size():] == s_sp.unk).all()
