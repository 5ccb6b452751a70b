"""The synthetic language lab: gold dictionaries, alignments, tags and topics are what they claim."""

import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from xlplastic.config import LabConfig, LabLanguageConfig
from xlplastic.data import synthetic as syn
from xlplastic.data.lab import (
    SCRIPTS, VERB, build_language, lab_grammar, dict_split, render, transform_text, transform_text_file, write_lab,
)
from xlplastic.errors import UserError

L = LabLanguageConfig


def _cfg(*langs, words=200, sentences=400, test_sentences=120, seed=0) -> LabConfig:
    return LabConfig(words=words, sentences=sentences, test_sentences=test_sentences, seed=seed, languages=list(langs))


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _types(path: Path) -> set[str]:
    return {w for line in _lines(path) for w in line.split()}


def _dict(files: dict) -> list[tuple[str, str]]:
    return [tuple(line.split(" ")) for k in ("dict_train", "dict_test") for line in _lines(files[k])]


def read_pos(path: Path) -> list[tuple[list[str], list[str]]]:
    """(words, UPOS) per sentence; every token line must have the 10 CoNLL-U columns."""
    out, words, tags = [], [], []
    for line in _lines(path) + [""]:
        if not line:
            if words:
                out.append((words, tags))
            words, tags = [], []
        elif not line.startswith("#"):
            cols = line.split("\t")
            assert len(cols) == 10 and cols[0] == str(len(words) + 1) and cols[2] == cols[4] == cols[6] == "_"
            words.append(cols[1])
            tags.append(cols[3])
    return out


def _parallel(files: dict):
    rows = [line.split("\t") for line in _lines(files["parallel"])]
    aligns = [[tuple(map(int, a.split("-"))) for a in line.split()] for line in _lines(files["align"])]
    return rows[0], rows[1:], aligns


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A source, a no-anchor reversed language, a half-anchor verb-final one with a topic shift."""
    cfg = _cfg(L(name="src"), L(name="fake", permute=1.0, word_order="reverse", seed=2),
               L(name="half", permute=0.5, word_order="verb_final", topics=[0.7, 0.1, 0.1, 0.1], seed=3),
               sentences=1000)
    out = tmp_path_factory.mktemp("lab")
    return cfg, out, write_lab(cfg, out)


def test_no_anchors_and_dictionary_reproduces_the_parallel_corpus(lab):
    cfg, _, files = lab
    src_types, fake_types = _types(files["src"]["train"]), _types(files["fake"]["train"])
    assert src_types and fake_types and not src_types & fake_types
    assert not {c for w in src_types for c in w} & {c for w in fake_types for c in w}  # not even a character
    pairs = _dict(files["src-fake"])
    assert len(pairs) == cfg.words  # every base word, split ~77% / rest below 6500 words
    assert len(_lines(files["src-fake"]["dict_train"])) == dict_split(cfg.words)[0] == round(cfg.words * 5000 / 6500)
    d = dict(pairs)
    assert len(d) == len(set(d.values())) == cfg.words  # a bijection
    header, rows, aligns = _parallel(files["src-fake"])
    assert header == ["src", "fake"] and len(rows) == len(aligns) == cfg.test_sentences
    for (a, b), al in zip(rows, aligns):
        a, b = a.split(), b.split()
        assert sorted(i for i, _ in al) == list(range(len(a))) and sorted(j for _, j in al) == list(range(len(b)))
        rebuilt = [None] * len(b)
        for i, j in al:
            rebuilt[j] = d[a[i]]
        assert rebuilt == b
        assert al == [(i, len(a) - 1 - i) for i in range(len(a))]  # reverse order
    # the dictionary is frequency-ordered: its first tenth is far more frequent than its last
    counts = Counter(w for line in _lines(files["src"]["train"]) for w in line.split())
    tenth = cfg.words // 10
    assert np.mean([counts[s] for s, _ in pairs[:tenth]]) > 10 * np.mean([counts[s] for s, _ in pairs[-tenth:]])


def test_half_permuted_shares_half_the_types(lab):
    cfg, out, files = lab
    grammar = lab_grammar(cfg)
    lang = build_language(grammar, cfg.languages[2])
    same = np.array(lang.surface) == np.array(grammar.words)
    assert same.sum() == cfg.words // 2  # gold share is exact: round(V * (1 - p)) anchors
    for c in range(len(syn.CLASSES)):  # stratified: every class loses half its words (up to rounding)
        n = (grammar.word_class == c).sum()
        assert abs(same[grammar.word_class == c].sum() - n / 2) <= 1
    pairs = _dict(files["src-half"])
    assert sum(a == b for a, b in pairs) == cfg.words // 2  # anchors map to themselves in the dictionary
    # Measured over the words that occur in both train files: only rare words are missing from them, and
    # the choice is stratified by frequency, so the share stays near 0.5; with ~180 observed types a
    # plain random half would have sd ~0.037, hence the +-0.1 bound (>2.5 sd) is safe yet informative.
    src_t, half_t = _types(files["src"]["train"]), _types(files["half"]["train"])
    assert abs(len(src_t & half_t) / len(half_t) - 0.5) < 0.1


def test_render_orders_and_alignments():
    grammar = syn.make_grammar(100, 4)
    verbs = np.flatnonzero(grammar.word_class == VERB)[:2]
    others = np.flatnonzero(grammar.word_class != VERB)[:4]
    ids = [others[0], verbs[0], others[1], others[2], verbs[1], others[3]]
    rev = build_language(grammar, L(name="r", word_order="reverse"))
    words, perm = render(rev, ids)
    assert perm == [5, 4, 3, 2, 1, 0] and words == [grammar.words[i] for i in ids[::-1]]
    vf = build_language(grammar, L(name="v", word_order="verb_final", permute=1.0))
    words, perm = render(vf, ids)
    assert perm == [0, 2, 3, 5, 1, 4]  # non-verbs in order, then the verbs in order
    assert words == [vf.surface[ids[p]] for p in perm]
    assert not set(words) & set(grammar.words)


def test_gold_pos_matches_grammar_and_verb_final_alignment(lab):
    cfg, _, files = lab
    grammar = lab_grammar(cfg)
    base_class = {w: syn.CLASSES[c] for w, c in zip(grammar.words, grammar.word_class)}
    src_test = read_pos(files["src"]["pos_test"])
    assert len(src_test) == cfg.test_sentences
    for words, tags in read_pos(files["src"]["pos_train"]) + src_test:
        assert tags == [base_class[w] for w in words]
    half = build_language(grammar, cfg.languages[2])
    half_class = {w: syn.CLASSES[c] for w, c in zip(half.surface, grammar.word_class)}
    half_test = read_pos(files["half"]["pos_test"])
    for words, tags in read_pos(files["half"]["pos_train"]) + half_test:
        assert tags == [half_class[w] for w in words]
        is_verb = [t == "VERB" for t in tags]
        assert is_verb == sorted(is_verb)  # verbs last
    _, rows, aligns = _parallel(files["src-half"])
    for (a, b), al, (sw, st), (tw, tt) in zip(rows, aligns, src_test, half_test):
        assert a.split() == sw and b.split() == tw
        assert all(st[i] == tt[j] for i, j in al) and len(al) == len(sw)
    assert any(i != j for al in aligns for i, j in al)  # the order did change somewhere
    # the topic test set is the same underlying sentences in every language
    try:  # the project's own CoNLL-U reader, where present, reads the same tags
        from xlplastic.tasks.readers import read_pos as project_read_pos
    except ImportError:
        project_read_pos = None
    if project_read_pos is not None:
        assert [list(ex.tags) for ex in project_read_pos(files["half"]["pos_test"])] == [t for _, t in half_test]
    topic_test = {k: [r.split("\t")[0] for r in _lines(files[k]["topic_test"])] for k in ("src", "half")}
    assert topic_test["src"] == topic_test["half"] and topic_test["src"][0] == "label"


def test_topics_shift_the_distribution(lab):
    cfg, out, files = lab
    shares = {}
    for name in ("src", "half"):
        rows = _lines(files[name]["topic_train"])
        assert rows[0] == "label\ttext" and len(rows) == 1 + min(4000, cfg.sentences)
        c = Counter(r.split("\t")[0] for r in rows[1:])
        shares[name] = c["t0"] / (len(rows) - 1)
    # 1000 sentences: sd of a share is <= 0.016, so 0.05 is > 3 sd
    assert abs(shares["src"] - 0.25) < 0.05 and abs(shares["half"] - 0.7) < 0.05
    test = Counter(r.split("\t")[0] for r in _lines(files["half"]["topic_test"])[1:])
    assert test["t0"] / cfg.test_sentences < 0.45  # the parallel test set keeps uniform topics


def test_lab_json_determinism_and_idempotence(tmp_path, lab):
    cfg, out, files = lab
    import json
    meta = json.loads((out / "lab.json").read_text(encoding="utf-8"))
    assert meta["languages"]["fake"]["anchors_gold"] == 0.0 and meta["languages"]["fake"]["anchors_measured"] == 0.0
    assert meta["languages"]["src"]["anchors_gold"] == 1.0 and meta["source"] == "src"
    assert meta["languages"]["half"]["topics"] == [0.7, 0.1, 0.1, 0.1]
    small = _cfg(L(name="a"), L(name="b", permute=0.7, word_order="verb_final", seed=5), sentences=100, test_sentences=30)
    m1, m2 = write_lab(small, tmp_path / "x"), write_lab(small, tmp_path / "y")
    paths = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert paths == sorted(p.name for p in (tmp_path / "y").iterdir()) and "lab.json" in paths
    assert not [p for p in paths if p.endswith(".tmp")]
    for name in paths:
        assert (tmp_path / "x" / name).read_bytes() == (tmp_path / "y" / name).read_bytes(), name
    assert set(m1) == {"a", "b", "a-b"} and set(m1["a-b"]) == {"dict_train", "dict_test", "parallel", "align"}
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "x").iterdir()}
    assert write_lab(small, tmp_path / "x") == m1  # same config: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "x").iterdir()} == stamps
    renamed = small.model_copy(update={"languages": [L(name="a"), L(name="c", permute=0.7, seed=5)]})
    m3 = write_lab(renamed, tmp_path / "x")  # another config: regenerated, the old language's files gone
    assert "c" in m3 and not (tmp_path / "x" / "b.train.txt").exists() and m3["c"]["train"].is_file()
    assert m2["a"]["train"].read_bytes() == m3["a"]["train"].read_bytes()  # the source did not change
    assert not any(p.name.startswith("dict.a-b") for p in (tmp_path / "x").iterdir())


@pytest.mark.parametrize("langs, match", [
    ([L(name="a", permute=1.5)], "permute is 1.5; expected a share"),
    ([L(name="a", topics=[0.5, 0.5, 0.0])], "topics is .*expected 4 non-negative"),
    ([L(name="a", topics=[1.0, -0.5, 0.25, 0.25])], "topics is"),
    ([L(name="a"), L(name="a", permute=1.0)], "duplicate language name 'a'"),
    ([L(name="en-fake")], "no '-'"),
    ([], "languages is empty"),
])
def test_bad_configs_name_the_problem(tmp_path, langs, match):
    with pytest.raises(UserError, match=match):
        write_lab(_cfg(*langs), tmp_path)
    assert not (tmp_path / "lab.json").exists()


def test_sampler_is_bitwise_unchanged_and_takes_topic_weights():
    def reference(grammar, n, seed):  # the original [S, V]-comparison sampler
        rng = np.random.default_rng([seed, 0x5A3])
        lengths = rng.integers(syn.MIN_LEN, syn.MAX_LEN + 1, size=n)
        topics = rng.integers(syn.NUM_TOPICS, size=n)
        cum_next, cum_word = np.cumsum(grammar.next_class, -1), np.cumsum(grammar.word_given_class, -1)
        ids = np.empty((n, syn.MAX_LEN), dtype=np.int64)
        cls = syn._draw(np.broadcast_to(np.cumsum(grammar.start), (n, len(grammar.start))), rng.random(n))
        for t in range(syn.MAX_LEN):
            ids[:, t] = syn._draw(cum_word[topics, cls], rng.random(n))
            cls = syn._draw(cum_next[ids[:, t]], rng.random(n))
        return [[grammar.words[i] for i in ids[s, :lengths[s]]] for s in range(n)], topics.tolist()

    for words, n, seed in [(16, 40, 0), (120, 300, 3)]:
        g = syn.make_grammar(words, seed)
        corpus = syn.sample(g, n, seed)
        assert (corpus.sentences, corpus.topics) == reference(g, n, seed)
    shifted = syn.sample(g, 2000, 1, topic_probs=[0.0, 3.0, 1.0, 0.0])  # weights are normalised
    share = Counter(shifted.topics)
    assert set(share) == {1, 2} and abs(share[1] / 2000 - 0.75) < 0.04
    freq = syn.word_frequencies(g)  # exact expectation vs. what the sampler emits
    emp = Counter(w for s in syn.sample(g, 2000, 2).sentences for w in s)
    assert abs(freq.sum() - (syn.MIN_LEN + syn.MAX_LEN) / 2) < 1e-9
    assert np.corrcoef(freq, [emp[w] for w in g.words])[0, 1] > 0.99


def test_scripts_survive_tokenizer_normalisation():
    for name, letters in SCRIPTS.items():
        assert len(set(letters)) == 20 and not any(c.isascii() for c in letters), name
        for c in letters:
            assert c.isalpha() and c.lower() == c == unicodedata.normalize("NFKC", c) == unicodedata.normalize("NFD", c)


def test_transform_text_on_real_text(shared_data, tmp_path):
    path = shared_data / "text" / "en.ud.txt"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    lines = path.read_text(encoding="utf-8").splitlines()[:200]
    out, mapping = transform_text(lines, permute=1.0, word_order="reverse", seed=7)
    types = {w for line in lines for w in line.split()}
    assert len(out) == len(lines) and set(mapping) == types
    assert not types & {w for line in out for w in line.split()}  # no anchors, punctuation included
    assert len(set(mapping.values())) == len(mapping)
    for a, b in zip(lines, out):
        assert b.split() == [mapping[w] for w in reversed(a.split())]
    assert transform_text(lines, permute=1.0, word_order="reverse", seed=7) == (out, mapping)
    half, m = transform_text(lines, permute=0.5, word_order="same", seed=7)
    assert sum(k == v for k, v in m.items()) == len(types) - round(len(types) * 0.5)
    # a second file under the first one's dictionary: known words map the same way
    more = path.read_text(encoding="utf-8").splitlines()[200:260]
    _, m2 = transform_text(more, permute=0.5, word_order="same", seed=7, vocab_from=lines)
    assert all(m2[w] == m[w] for w in m2 if w in m)
    src = tmp_path / "en200.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stats = transform_text_file(src, tmp_path / "fake.txt", tmp_path / "dict.txt", permute=1.0,
                                word_order="reverse", seed=7)
    assert _lines(tmp_path / "fake.txt") == out  # same words counted -> same dictionary
    assert stats["anchor_share_types"] == 0.0 and stats["lines"] == 200 and stats["types"] == len(types)
    assert [tuple(x.split(" ")) for x in _lines(tmp_path / "dict.txt")] == list(mapping.items())


def test_transform_text_errors(tmp_path):
    with pytest.raises(UserError, match="verb_final' is not defined for untagged text"):
        transform_text(["a b c"], permute=1.0, word_order="verb_final", seed=0)
    with pytest.raises(UserError, match="permute is -0.1"):
        transform_text(["a b c"], permute=-0.1, word_order="same", seed=0)
    with pytest.raises(UserError, match="file not found"):
        transform_text_file(tmp_path / "missing.txt", tmp_path / "out.txt", permute=1.0)
    out, m = transform_text(["the cat sat", "", "the end"], permute=1.0, word_order="reverse", seed=0)
    assert out[1] == "" and out[0].split()[-1] == out[2].split()[-1] == m["the"]
