"""Task readers: counts on the real shared data, and a file:line message for every malformed input."""

from __future__ import annotations

from collections import Counter

import pytest

from xlplastic.errors import UserError
from xlplastic.tasks.readers import (ClassificationExample, ParsingExample, QAExample, TaggingExample,
                                     check_labels, label_map, load_hf_task, read_bio, read_classification,
                                     read_conllu, read_pos, read_squad, read_task)

EWT_DEV = "ud/UD_English-EWT/en_ewt-ud-dev.conllu"


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def conllu_line(i, word, upos="NOUN", head="0", rel="root"):
    return "\t".join([str(i), word, word.lower(), upos, "_", "_", str(head), rel, "_", "_"])


# --- real data ------------------------------------------------------------------------------------
def test_xnli_en_dev_has_2490_balanced_pairs(shared_data):
    examples = read_classification(shared_data / "xnli/en.dev.tsv")
    assert len(examples) == 2490
    assert Counter(e.label for e in examples) == {"contradiction": 830, "entailment": 830, "neutral": 830}
    assert all(e.text_pair for e in examples)
    assert examples[0] == ClassificationExample("And he said, Mama, I'm home.",
                                                "He called his mom as soon as the school bus dropped him off.",
                                                "neutral")
    assert len(read_task("classification", str(shared_data / "xnli/sw.test.tsv"), max_examples=7)) == 7


def test_ewt_dev_skips_multiword_tokens_and_empty_nodes(shared_data):
    trees = read_conllu(shared_data / EWT_DEV)
    assert len(trees) == 2001
    assert all(len(t.words) == len(t.upos) == len(t.heads) == len(t.deprels) for t in trees)
    assert all(0 <= h <= len(t.words) for t in trees for h in t.heads)
    assert all(t.heads.count(0) >= 1 for t in trees)
    # `1-2 Today's` is a multiword range over the words `Today` `'s`: only the words are kept.
    todays = [t for t in trees if t.words[:2] == ("Today", "'s")]
    assert todays and not any("Today's" in t.words for t in trees)
    # `8.1 write` is an empty node between `like` (8) and `about` (9): skipped, ids stay consecutive.
    [tree] = [t for t in trees if ("they", "like", "about", "our", "prophet") == t.words[6:11]]
    assert tree.heads[7] == 6 and tree.deprels[9] == "nmod:poss"  # subtypes kept as written
    pos = read_pos(shared_data / EWT_DEV, max_sentences=50)
    assert len(pos) == 50 and pos[0].words == trees[0].words and pos[0].tags == trees[0].upos


def test_wikiann_and_xquad(shared_data):
    ner = read_bio(shared_data / "ner/wikiann/en/val.conllu")
    assert len(ner) == 10000
    assert ner[0] == TaggingExample(("Sioux", "Falls", "Arena", "(", "Sioux", "Falls", ",", "South", "Dakota", ")"),
                                    ("B-ORG", "I-ORG", "I-ORG", "O", "B-LOC", "I-LOC", "I-LOC", "I-LOC", "I-LOC", "O"))
    assert set(label_map(ner)) == {"O"} | {f"{p}-{t}" for p in "BI" for t in ("LOC", "ORG", "PER")}
    qa = read_squad(shared_data / "xquad/xquad.en.json")
    assert len(qa) == 1190 and len({q.id for q in qa}) == 1190
    assert all(q.answers and q.context[s:s + len(t)] == t for q in qa for t, s in q.answers)
    assert len(read_task("qa", str(shared_data / "xquad/xquad.zh.json"), max_examples=3)) == 3


# --- classification formats -----------------------------------------------------------------------
def test_classification_formats(tmp_path):
    single = write(tmp_path, "sst.tsv", "text\tlabel\tid\nnice \"film\"\tpos\t1\n\nbad\tneg\t2\n")
    assert read_classification(single) == [ClassificationExample('nice "film"', None, "pos"),
                                           ClassificationExample("bad", None, "neg")]
    original = write(tmp_path, "xnli.dev.tsv",
                     "language\tgold_label\tsentence1\tsentence2\tpairID\n"
                     "en\tentailment\tA man.\tA person.\t1\nfr\tneutral\tUn homme.\tIl dort.\t1\n"
                     "fr\t-\tX.\tY.\t2\n")
    assert read_classification(original, language="fr") == [ClassificationExample("Un homme.", "Il dort.", "neutral")]
    assert len(read_classification(original)) == 2  # the `-` (no gold label) row is skipped
    jsonl = write(tmp_path, "mnli.jsonl",
                  '{"gold_label": "contradiction", "sentence1": "A", "sentence2": "B", "language": "sw"}\n'
                  '{"gold_label": "-", "sentence1": "C", "sentence2": "D"}\n\n'
                  '{"gold_label": "entailment", "sentence1": "E", "sentence2": "F"}\n')
    assert [e.label for e in read_classification(jsonl)] == ["contradiction", "entailment"]
    assert [e.text for e in read_classification(jsonl, language="sw", max_examples=1)] == ["A"]


@pytest.mark.parametrize("name, content, where, expected", [
    ("a.tsv", "label\tpremise\thypothesis\nneutral\tA\tB\nneutral\tA\n", ":3:", "expected 3"),
    ("b.tsv", "premise\thypothesis\nA\tB\n", ":1:", "expected `label`"),
    ("c.tsv", "label\ttext\n\tgood\n", ":2:", "empty label"),
    ("d.jsonl", '{"gold_label": "x", "sentence1": "A", "sentence2": "B"}\n{"gold_label": \n', ":2:", "JSONL"),
    ("e.jsonl", '["entailment", "A", "B"]\n', ":1:", "expected an object"),
    ("f.jsonl", '{"label": "x", "hyp": "B"}\n', ":1:", "expected `label`"),
    ("g.tsv", b"label\ttext\npos\tgood\npos\tbad \xff\n", ":3:", "not valid UTF-8"),
])
def test_classification_errors(tmp_path, name, content, where, expected):
    path = write(tmp_path, name, content)
    with pytest.raises(UserError) as err:
        read_classification(path)
    assert f"{path}{where}" in str(err.value) and expected in str(err.value) and "\n" not in str(err.value)


# --- CoNLL-U --------------------------------------------------------------------------------------
def test_conllu_details(tmp_path):
    lines = ["# sent_id = 1", "1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_", conllu_line(1, "Do", "AUX", 3, "aux"),
             conllu_line(2, "n't", "PART", 3, "advmod"), conllu_line(3, "go", "VERB", 0, "root"),
             "3.1\tgo\tgo\tVERB\t_\t_\t_\t_\t3:conj\t_", "", "", conllu_line(1, "Hi", "INTJ", "_", "_")]
    path = write(tmp_path, "x.conllu", "\r\n".join(lines))  # CRLF and no final blank line
    assert read_conllu(path) == [ParsingExample(("Do", "n't", "go"), ("AUX", "PART", "VERB"), (3, 3, 0),
                                                ("aux", "advmod", "root")),
                                 ParsingExample(("Hi",), ("INTJ",), (0,), ("_",))]
    assert len(read_conllu(path, max_sentences=1)) == 1
    assert read_pos(path)[1] == TaggingExample(("Hi",), ("INTJ",))


@pytest.mark.parametrize("rows, lineno, expected", [
    ([conllu_line(1, "a"), "2\tb\tb\tNOUN\t_\t_\t1\tdep"], 3, "has 8 columns; expected 10"),
    ([conllu_line(1, "a"), conllu_line(2, "b", head=5)], 3, "HEAD '5' of word 2"),
    ([conllu_line(1, "a", head=1)], 2, "other than 1"),
    ([conllu_line(1, "a", head="x")], 2, "HEAD 'x'"),
    ([conllu_line("a", "a")], 2, "ID 'a' is not an integer"),
    ([conllu_line(1, "a"), conllu_line(3, "b")], 3, "out of order; expected 2"),
])
def test_conllu_errors(tmp_path, rows, lineno, expected):
    path = write(tmp_path, "bad.conllu", "\n".join(["# text = a b"] + rows) + "\n")
    with pytest.raises(UserError, match=expected) as err:
        read_conllu(path)
    assert f"{path}:{lineno}: " in str(err.value)


# --- BIO ------------------------------------------------------------------------------------------
def test_bio_layouts(tmp_path):
    conll = write(tmp_path, "eng.train", "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n"
                  "1990 CD I-NP O\n\nPeter NNP B-NP I-PER\n")
    assert read_bio(conll) == [TaggingExample(("EU", "rejects", "1990"), ("B-ORG", "O", "O")),
                               TaggingExample(("Peter",), ("I-PER",))]
    prefixed = write(tmp_path, "pan.txt", "en:Paris\tB-LOC\nen:is\tO\n\nen:en:x\tO\nre:y\tO\n")
    assert [s.words for s in read_bio(prefixed)] == [("Paris", "is"), ("en:x", "re:y")]
    # Not every token of the first sentence has a prefix: nothing is stripped, and `7` is a token.
    plain = write(tmp_path, "wikiann.conllu", "0\tre:Invent\tB-MISC\n1\t7\tO\n\n0\ten:x\tO\n")
    assert read_bio(plain) == [TaggingExample(("re:Invent", "7"), ("B-MISC", "O")), TaggingExample(("en:x",), ("O",))]


@pytest.mark.parametrize("content, lineno, expected", [
    ("0\tParis\tB-LOC\n1\tis\tB_LOC\n", 2, "tag 'B_LOC' is not IOB2"),
    ("0\tParis\tE-LOC\n", 1, "tag 'E-LOC'"),
    ("0\tParis\tB-LOC\n\n0\tRome\n", 3, "`idx<TAB>token<TAB>tag`"),
    ("Paris B-LOC\nRome\n", 2, "expected `token ... tag`"),
    (b"0\tParis\tB-LOC\n1\t\xc3(\tO\n", 2, "not valid UTF-8"),
])
def test_bio_errors(tmp_path, content, lineno, expected):
    path = write(tmp_path, "bad.txt", content)
    with pytest.raises(UserError, match=expected) as err:
        read_bio(path)
    assert f"{path}:{lineno}: " in str(err.value)


# --- SQuAD ----------------------------------------------------------------------------------------
def squad_json(answer_start=12, text="France"):
    return ('{"version": "1.1", "data": [{"title": "Paris", "paragraphs": [{"context": "Paris is in France.",\n'
            '"qas": [{"id": "q1", "question": "Where?", "answers": [{"text": "%s", "answer_start": %d}]},\n'
            '{"id": "q2", "question": "Unanswerable?", "answers": []}]}]}]}' % (text, answer_start))


def test_squad_small(tmp_path):
    path = write(tmp_path, "s.json", squad_json())
    assert read_squad(path) == [QAExample("q1", "Where?", "Paris is in France.", (("France", 12),), "Paris"),
                                QAExample("q2", "Unanswerable?", "Paris is in France.", (), "Paris")]
    assert len(read_squad(path, max_examples=1)) == 1


@pytest.mark.parametrize("content, expected", [
    (squad_json(answer_start=11), "s.json: question 'q1': answer 'France' is not at answer_start 11"),
    ('{"version": "1.1", "data": {"title": "x"}}', "s.json: the top-level JSON value has no list 'data'"),
    ('[{"context": "x"}]', "s.json: the top-level JSON value has no list 'data'"),
    ('{"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}', "s.json: data[0].paragraphs[0] has no str 'context'"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "z", "answers": []}]}]}]}',
     "s.json: question 'z' has no str 'question'"),
    ('{"data": [\n{"title": "x",\n  "paragraphs": [}', "s.json:3: not valid JSON"),
    ("", "s.json:1: not valid JSON"),
    (b'{"data": []}\n\x80', "s.json:2: byte 0x80"),
])
def test_squad_errors(tmp_path, content, expected):
    write(tmp_path, "s.json", content)
    with pytest.raises(UserError) as err:
        read_squad(tmp_path / "s.json")
    assert f"{tmp_path}/{expected}" in str(err.value) and "\n" not in str(err.value)


# --- read_task, label sets ------------------------------------------------------------------------
def test_read_task_missing_and_empty(tmp_path):
    with pytest.raises(UserError, match=r"nope.conllu: no such file; expected a CoNLL-U file for the parsing task"):
        read_task("parsing", str(tmp_path / "nope.conllu"))
    with pytest.raises(UserError, match="task kind 'srl' is unknown"):
        read_task("srl", str(tmp_path))
    for kind, name, content in [("pos", "e.conllu", "# a comment\n\n"), ("ner", "e.txt", "\n\n"),
                                ("parsing", "c.conllu", ""), ("ner", "d.txt", "-DOCSTART- O\n")]:
        path = write(tmp_path, name, content)
        with pytest.raises(UserError, match=f"{path}: no examples found; expected"):
            read_task(kind, str(path))
    header_only = write(tmp_path, "h.tsv", "label\tpremise\thypothesis\n")
    with pytest.raises(UserError, match="h.tsv: no examples found; expected a TSV/JSONL file"):
        read_task("classification", str(header_only))
    jsonl = write(tmp_path, "x.jsonl",
                  '{"gold_label": "neutral", "sentence1": "A", "sentence2": "B", "language": "en"}\n')
    with pytest.raises(UserError, match="x.jsonl: no examples found with language 'sw'"):
        read_task("classification", str(jsonl), language="sw")
    tsv = write(tmp_path, "en.tsv", "label\tpremise\thypothesis\nneutral\tA\tB\n")
    assert len(read_task("classification", str(tsv), language="sw")) == 1  # no language column: kept whole


def test_label_map_and_check_labels():
    trees = [ParsingExample(("a", "b"), ("X", "Y"), (0, 1), ("root", "nmod:poss")),
             ParsingExample(("c",), ("X",), (0,), ("root",))]
    assert label_map(trees) == {"nmod": 0, "root": 1}  # subtype stripped
    nli = [ClassificationExample("a", "b", "neutral"), ClassificationExample("c", None, "entailment")]
    assert label_map(nli) == {"entailment": 0, "neutral": 1}
    assert label_map([QAExample("q", "?", "c", ())]) == {}
    check_labels(label_map(nli), nli[:1], "test.tsv")  # a subset of the training labels is fine
    tags = [TaggingExample(tuple("abcdefghij"), ("B-PER", "I-PER", "B-LOC", "B-A", "B-B", "B-C", "B-D", "B-E",
                                                 "B-F", "B-G"))]
    with pytest.raises(UserError) as err:
        check_labels({"O": 0, "B-PER": 1, "I-PER": 2}, tags, "de/test.conllu")
    assert str(err.value) == ("de/test.conllu: labels B-A, B-B, B-C, B-D, B-E, B-F, B-G, B-LOC do not occur in the "
                              "training data (which has 3 labels: B-PER, I-PER, O); expected the same label set")


# --- Hugging Face datasets, local files only ------------------------------------------------------
@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="the HF `datasets` package is not installed")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    datasets.disable_progress_bars()
    return datasets


def test_load_hf_task_local_files(tmp_path, hf_cache):
    ds = hf_cache
    qa = write(tmp_path, "qa.jsonl", '{"id": "q1", "title": "T", "context": "Paris is in France.", "question": "W?",'
               ' "answers": {"text": ["France"], "answer_start": [12]}}\n')
    assert load_hf_task("qa", "json", data_files=str(qa)) == [
        QAExample("q1", "W?", "Paris is in France.", (("France", 12),), "T")]
    ud = write(tmp_path, "ud.jsonl", '{"tokens": ["Don\'t", "Do", "n\'t", "go"], "upos": ["_", "AUX", "PART", "VERB"],'
               ' "head": ["None", "3", "3", "0"], "deprel": ["_", "aux", "advmod", "root"]}\n')
    assert load_hf_task("parsing", "json", data_files=str(ud)) == [
        ParsingExample(("Do", "n't", "go"), ("AUX", "PART", "VERB"), (3, 3, 0), ("aux", "advmod", "root"))]
    assert load_hf_task("pos", "json", data_files=str(ud))[0].tags == ("AUX", "PART", "VERB")
    pos = write(tmp_path, "pos.jsonl", '{"tokens": ["Hi", "!"], "upos": ["INTJ", "PUNCT"]}\n')
    assert load_hf_task("pos", "json", data_files=str(pos)) == [TaggingExample(("Hi", "!"), ("INTJ", "PUNCT"))]
    # ClassLabel ints map to names: parquet files written by `datasets` keep their features.
    nli = ds.Dataset.from_dict(
        {"premise": ["A", "B", "C"], "hypothesis": ["x", "y", "z"], "label": [2, -1, 0],
         "language": ["en", "en", "sw"]},
        features=ds.Features({"premise": ds.Value("string"), "hypothesis": ds.Value("string"),
                              "label": ds.ClassLabel(names=["entailment", "neutral", "contradiction"]),
                              "language": ds.Value("string")}))
    nli.to_parquet(str(tmp_path / "nli.parquet"))
    got = load_hf_task("classification", "parquet", data_files=str(tmp_path / "nli.parquet"))
    assert got == [ClassificationExample("A", "x", "contradiction"), ClassificationExample("C", "z", "entailment")]
    assert load_hf_task("classification", "parquet", data_files=str(tmp_path / "nli.parquet"),
                        language="sw") == got[1:]
    tag_names = ds.ClassLabel(names=["O", "B-PER", "I-PER"])
    ner = ds.Dataset.from_dict({"tokens": [["Ada", "Lovelace", "wrote"]], "ner_tags": [[1, 2, 0]]},
                               features=ds.Features({"tokens": ds.Sequence(ds.Value("string")),
                                                     "ner_tags": ds.Sequence(tag_names)}))
    ner.to_parquet(str(tmp_path / "ner.parquet"))
    assert load_hf_task("ner", "parquet", data_files=str(tmp_path / "ner.parquet")) == [
        TaggingExample(("Ada", "Lovelace", "wrote"), ("B-PER", "I-PER", "O"))]
    with pytest.raises(UserError, match="row 0 has no column 'tokens'.*expected the HF schema for ner"):
        load_hf_task("ner", "json", data_files=str(qa))
    with pytest.raises(UserError, match="json: cannot load HF dataset.*expected a hub dataset name"):
        load_hf_task("qa", "json", data_files=str(tmp_path / "missing.jsonl"))
