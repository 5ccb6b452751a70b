"""Bad data, files, mesh and compiler options, checkpoints and run folders through `xlplastic.cli.main`, in-process (no JAX start-up
per case): each case is exit 2, exactly one stderr line `xlplastic: error: ...` naming the file or key,
and nothing written or changed: a new run folder is not left behind, an existing one is byte-identical.
(Config and CLI mistakes are in test_bad_inputs.py; faults during a run in test_checkpoint_faults.py.)"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from xlplastic import cli

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
QUICK = ["--set", "train.progress=false", "--set", "train.steps=2", "--set", "checkpoint.every=0"]


def _tree(d: Path) -> dict[str, str]:
    if not d.exists():
        return {}
    return {str(p.relative_to(d)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def _one_line(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("xlplastic: error: "), err[-3000:]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from xlplastic.data.lab import write_lab

    d = tmp_path_factory.mktemp("lab")
    write_lab({"grammar": "bigram", "words": 80, "sentences": 300, "test_sentences": 30, "seed": 0,
               "languages": [{"name": "syn"}]}, d)
    return d


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def _mlm_cfg(tmp: Path, corpus: str, kind: str = "text", extra: str = "") -> Path:
    return _write(tmp / "c.yaml", f"base: {TINY}\ndata:\n  data_dir: {tmp}\n  corpora:\n"
                                  f"    - {{language: xx, kind: {kind}, path: {corpus}}}\n{extra}")


def _task_cfg(tmp: Path, lab: Path, train: str, test: str, kind: str = "pos", extra: str = "") -> Path:
    return _write(tmp / "t.yaml", f"""base: {TINY}
data:
  data_dir: {lab}
  corpora: [{{language: syn, kind: text, path: syn.train.txt}}]
task: {{name: t, kind: {kind}, train: {train}, test: {{syn: {test}}}, seq_len: 32}}
{extra}""")


def _run(cfg: Path, run_dir: Path, *args: str) -> int:
    return cli.main(["run", str(cfg), "--run-dir", str(run_dir), *QUICK, *args])


# ---- corpora and tokenizers: (file name, content or None for "absent", config extra, needles)

CORPUS_CASES = {
    "missing": ("absent.txt", None, "text", "", ["absent.txt"]),
    "empty": ("empty.txt", b"", "text", "", ["corpus `xx`", "empty.txt", "no non-empty text"]),
    "blank_lines": ("blank.txt", b"\n   \n\t\n", "text", "", ["corpus `xx`", "blank.txt", "no non-empty text"]),
    "not_utf8": ("latin1.txt", "the first line is fine\n".encode() + "caf\u00e9 au lait\n".encode("latin-1"), "text", "",
                 ["latin1.txt:2:", "not UTF-8", "0xe9", "expected UTF-8"]),
    "jsonl_malformed": ("c.jsonl", b'{"text": "a b"}\n{"text": \n', "jsonl", "", ["c.jsonl:2"]),
    "jsonl_not_object": ("c.jsonl", b'{"text": "a b"}\n[1, 2]\n', "jsonl", "", ["c.jsonl:2"]),
    "jsonl_no_text_field": ("c.jsonl", b'{"body": "a b"}\n', "jsonl", "", ["c.jsonl"]),
    "tokenizer_missing": ("ok.txt", b"a b c\n" * 50, "text", "  tokenizer: {path: nothere.json}\n", ["nothere.json"]),
    "tokenizer_not_json": ("ok.txt", b"a b c\n" * 50, "text", "  tokenizer: {path: tok.json}\n", ["tok.json", "not a valid tokenizer.json"]),
    "vocabulary_wrong_format": ("ok.txt", b"a b c\n" * 50, "text", "  tokenizer: {path: vocabulary.json}\n", ["vocabulary.json", "format"]),
    "vocab_size_too_small": ("ok.txt", " ".join(f"w{i}" for i in range(300)).encode() + b"\n" * 1, "text",
                             "model: {vocab_size: 8}\n", ["model.vocab_size 8"]),
}


@pytest.mark.parametrize("case", sorted(CORPUS_CASES))
def test_bad_corpus_or_tokenizer(tmp_path, capsys, case):
    name, content, kind, extra, needles = CORPUS_CASES[case]
    if content is not None:
        _write(tmp_path / name, content)
    _write(tmp_path / "tok.json", "{not json")
    _write(tmp_path / "vocabulary.json", json.dumps({"format": "something-else"}))
    extra_data = extra if extra.startswith("  ") else ""
    extra_top = "" if extra_data else extra
    cfg = _write(tmp_path / "c.yaml", f"base: {TINY}\ndata:\n  data_dir: {tmp_path}\n  corpora:\n"
                                      f"    - {{language: xx, kind: {kind}, path: {name}}}\n{extra_data}{extra_top}")
    before = _tree(tmp_path)
    _one_line(capsys, _run(cfg, tmp_path / "run"), *needles)
    assert not (tmp_path / "run").exists()
    assert _tree(tmp_path) == before


def test_corpus_path_is_a_folder_without_text(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    cfg = _mlm_cfg(tmp_path, "folder")
    _one_line(capsys, _run(cfg, tmp_path / "run"), "folder")
    assert not (tmp_path / "run").exists()


# ---- task files

TASK_CASES = {
    "train_missing": ("pos", "absent.conllu", "syn.pos.test.conllu", None, ["absent.conllu"]),
    "conllu_columns": ("pos", "bad.conllu", "syn.pos.test.conllu", "1\tword\tNOUN\n\n", ["bad.conllu:1", "10 tab-separated columns"]),
    "conllu_id_not_int": ("pos", "bad.conllu", "syn.pos.test.conllu",
                          "x\tw\tw\tNOUN\t_\t_\t0\troot\t_\t_\n\n", ["bad.conllu:1", "ID"]),
    "conllu_id_order": ("pos", "bad.conllu", "syn.pos.test.conllu",
                        "2\tw\tw\tNOUN\t_\t_\t0\troot\t_\t_\n\n", ["bad.conllu:1", "out of order"]),
    "tsv_header": ("classification", "bad.tsv", "bad.tsv", "a\tb\n1\t2\n", ["bad.tsv:1", "header"]),
    "tsv_row_columns": ("classification", "bad.tsv", "bad.tsv", "premise\thypo\tlabel\nx\ty\n", ["bad.tsv"]),
    "tsv_too_many_columns": ("classification", "bad.tsv", "bad.tsv", "label\ttext\na\tfine line\nb\tone\ttoo many\n",
                             ["bad.tsv:3"]),
    "tsv_empty_label": ("classification", "bad.tsv", "bad.tsv", "premise\thypo\tlabel\nx\ty\t\n", ["bad.tsv:2", "empty label"]),
    "bio_not_iob2": ("ner", "bad.bio", "bad.bio", "word X-PER\n\n", ["bad.bio:1", "IOB2"]),
    "squad_not_json": ("qa", "bad.json", "bad.json", "{\"data\": [", ["bad.json"]),
    "test_label_unseen": ("pos", "syn.pos.train.conllu", "odd.conllu",
                          "1\tw\tw\tNOTATAG\t_\t_\t0\troot\t_\t_\n\n", ["odd.conllu", "NOTATAG"]),
}


@pytest.mark.parametrize("case", sorted(TASK_CASES))
def test_bad_task_file(lab, tmp_path, capsys, case):
    kind, train, test, content, needles = TASK_CASES[case]
    work = tmp_path / "data"
    shutil.copytree(lab, work)
    bad = train if train.startswith(("bad", "absent")) else test
    if content is not None:
        _write(work / bad, content)
    cfg = _task_cfg(tmp_path, work, train, test, kind)
    before = _tree(work)
    _one_line(capsys, _run(cfg, tmp_path / "run"), *needles)
    assert not (tmp_path / "run").exists()
    assert _tree(work) == before


def test_test_label_missing_from_training(tmp_path, capsys):
    _write(tmp_path / "train.tsv", "label\ttext\na\tone line\nb\tanother line\n")
    _write(tmp_path / "test.tsv", "label\ttext\na\tone line\nzebra\tunseen label\n")
    cfg = _write(tmp_path / "t.yaml", f"base: {TINY}\ndata:\n  data_dir: {tmp_path}\n"
                                      "task: {name: t, kind: classification, train: train.tsv, test: {xx: test.tsv}, seq_len: 32}\n")
    _one_line(capsys, _run(cfg, tmp_path / "run"), "test.tsv", "zebra", "training data")
    assert not (tmp_path / "run").exists()


def test_eval_only_without_a_model_to_score(lab, tmp_path, capsys):
    cfg = _task_cfg(tmp_path, lab, "syn.pos.train.conllu", "syn.pos.test.conllu")
    code = cli.main(["run", str(cfg), "--run-dir", str(tmp_path / "run"), "--set", "train.steps=0"])
    _one_line(capsys, code, "train.steps=0", "init.from_run")
    assert not (tmp_path / "run").exists()


# ---- mesh and compiler options (after JAX starts, before anything compiles)


@pytest.mark.parametrize("sets, needles", [
    (["train.batch_size=6", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
     ["train.batch_size 6", "data*fsdp = 4", "expected a multiple of 4"]),
    (["train.compiler_options={xla_cpu_use_onednnn: true}"],
     ["train.compiler_options", "xla_cpu_use_onednnn", "expected XLA DebugOptions"]),
], ids=["batch-not-divisible-by-data-times-fsdp", "unknown-compiler-option"])
def test_bad_mesh_or_compiler_option(tmp_path, capsys, sets, needles):
    _one_line(capsys, _run(TINY, tmp_path / "run", *[a for s in sets for a in ("--set", s)]), *needles)
    assert not (tmp_path / "run").exists()


# ---- checkpoints, other runs and run folders


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(["run", str(TINY), "--run-dir", str(d), "--set", "train.progress=false", "--set", "train.steps=4",
                     "--set", "checkpoint.every=2"]) == 0
    return d


def _copy(trained: Path, tmp_path: Path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(trained, d)
    return d


def _same_run(trained, tmp_path, capsys, args, *needles):
    d = _copy(trained, tmp_path)
    before = _tree(d)
    _one_line(capsys, cli.main(["run", str(TINY), "--run-dir", str(d), "--set", "train.progress=false",
                                "--set", "train.steps=4", "--set", "checkpoint.every=2", *args]), *needles)
    assert _tree(d) == before


def test_changed_config_is_refused(trained, tmp_path, capsys):
    _same_run(trained, tmp_path, capsys, ["--set", "train.optimizer.lr=0.01"], "train.optimizer.lr", "another config")


def test_allow_change_of_an_unsafe_key(trained, tmp_path, capsys):
    _same_run(trained, tmp_path, capsys, ["--set", "train.seed=3", "--allow-change", "train.seed"], "--allow-change train.seed")


def test_every_checkpoint_damaged(trained, tmp_path, capsys):
    d = _copy(trained, tmp_path)
    for step in (2, 4):
        for f in (d / "checkpoints" / str(step) / "state").rglob("*"):
            if f.is_file() and "/d/" in str(f):
                f.write_bytes(b"")
    (d / "results.json").unlink()  # an unfinished run: it must resume
    before = _tree(d)
    _one_line(capsys, cli.main(["run", str(TINY), "--run-dir", str(d), "--set", "train.progress=false",
                                "--set", "train.steps=4", "--set", "checkpoint.every=2"]), "no intact checkpoint")
    assert _tree(d) == before


def _from_run_cfg(tmp_path: Path, from_run: str, extra: str = "") -> Path:
    return _write(tmp_path / "a.yaml", f"base: {TINY}\ninit: {{from_run: {from_run}}}\n{extra}")


def test_from_run_missing(tmp_path, capsys):
    _one_line(capsys, _run(_from_run_cfg(tmp_path, str(tmp_path / "nowhere")), tmp_path / "run"), "nowhere")
    assert not (tmp_path / "run").exists()


def test_from_run_without_checkpoint(tmp_path, capsys):
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    _one_line(capsys, _run(_from_run_cfg(tmp_path, str(tmp_path / "empty_run")), tmp_path / "run"), "no complete checkpoint")
    assert not (tmp_path / "run").exists()


def test_from_run_with_other_shapes(trained, tmp_path, capsys):
    cfg = _from_run_cfg(tmp_path, str(trained), "model: {mlp_dim: 96}\n")
    before = _tree(trained)
    _one_line(capsys, _run(cfg, tmp_path / "run"), "mlp")
    assert not (tmp_path / "run").exists() and _tree(trained) == before


def test_map_embeddings_needs_word_level_tokenizers(trained, tmp_path, capsys):
    """The oracle's gather is exact only when tokens are words: a BPE run is refused, naming the fix."""
    _write(tmp_path / "d.dict", "a b\n")
    cfg = _write(tmp_path / "m.yaml", f"base: {TINY}\ninit:\n  from_run: {trained}\n"
                                      f"  map_embeddings: {{dictionaries: [{tmp_path / 'd.dict'}]}}\n")
    _one_line(capsys, _run(cfg, tmp_path / "run"), "init.map_embeddings", "wordlevel")
    assert not (tmp_path / "run").exists()


def test_run_dir_is_a_file(tmp_path, capsys):
    f = _write(tmp_path / "afile", "x")
    _one_line(capsys, _run(TINY, f), "is a file")
    assert f.read_text() == "x"


def test_run_dir_under_a_file(tmp_path, capsys):
    f = _write(tmp_path / "afile", "x")
    _one_line(capsys, _run(TINY, f / "sub"), "afile")


def test_bench_json_is_a_folder(tmp_path, capsys):
    _one_line(capsys, cli.main(["bench", "train", "--json", str(tmp_path)]), str(tmp_path))


def test_analyze_too_many_runs(trained, tmp_path, capsys):
    _one_line(capsys, cli.main(["analyze", str(trained), str(trained), str(trained)]), "one or two run directories")


def test_analyze_run_without_checkpoint(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    _one_line(capsys, cli.main(["analyze", str(tmp_path / "r")]), str(tmp_path / "r"))
