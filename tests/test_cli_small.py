"""Small things a new user hits (issue 11): help texts, `bench ... --help`, `--json` checked before a
benchmark runs, `bench train --threads`, dead code gone, the punctuation rule's name, word-translation
candidates, nothing after `done:`, and the compilation-cache line said once."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from xlplastic import cli
from xlplastic.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# 1. --num-processes / --process-id say what they are


def test_run_help_explains_the_process_flags(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for needle in ("--num-processes N", "--process-id I", "XLPLASTIC_NUM_PROCESSES", "XLPLASTIC_PROCESS_ID",
                   "XLPLASTIC_COORDINATOR", "with --coordinator"):
        assert needle in out, needle


# 2. `xlplastic bench <what> --help` is the benchmark's own help


@pytest.mark.parametrize("what, own_option", [("train", "--steps-per-call"), ("memory", "--devices"),
                                              ("analysis", "--cka-tokens")])
def test_bench_help_shows_the_benchmarks_options(capsys, what, own_option):
    assert cli.main(["bench", what, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: xlplastic bench {what}") and own_option in out


def test_bench_help_without_a_benchmark(capsys):
    assert cli.main(["bench", "-h"]) == 0
    assert "benchmark's own options" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as e:
        cli.main(["bench"])
    assert e.value.code == 2


# 3. --json PATH is checked before the benchmark runs


def _one_error_line(err: str, *needles: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xlplastic: error: --json "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_bench_json_path_checked_first(tmp_path, capsys, monkeypatch):
    from xlplastic.bench import train_bench

    calls = []
    monkeypatch.setattr(train_bench, "main", lambda argv: calls.append(argv) or 0)
    assert cli.main(["bench", "train", "--json", str(tmp_path), "--layers", "1"]) == 2
    _one_error_line(capsys.readouterr().err, str(tmp_path), "is a directory")
    (tmp_path / "file").write_text("")
    assert cli.main(["bench", "train", "--json", str(tmp_path / "file" / "out.json")]) == 2
    _one_error_line(capsys.readouterr().err, "is not a directory")
    assert calls == []  # the benchmark never started
    # a new file, even in folders still to be made (write_json creates them), is fine
    ok = tmp_path / "new" / "dir" / "out.json"
    assert cli.main(["bench", "train", "--json", str(ok), "--layers", "1"]) == 0
    assert calls == [["--layers", "1", "--json", str(ok)]]


def test_bench_main_checks_json_itself(tmp_path):
    from xlplastic.bench import train_bench

    with pytest.raises(UserError, match="is a directory"):
        train_bench.main(["--json", str(tmp_path)])  # raised right after parsing, before any work


# 4. --threads wins, with or without sched_getaffinity


def test_threads_flag_is_not_dropped(monkeypatch):
    from xlplastic.bench.train_bench import resolve_threads

    assert resolve_threads(3) == 3
    if hasattr(os, "sched_getaffinity"):
        assert resolve_threads(None) == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # as on macOS, where the old expression lost it
    assert resolve_threads(3) == 3
    assert resolve_threads(None) == (os.cpu_count() or 1)
    with pytest.raises(UserError, match="--threads 0"):
        resolve_threads(0)


# 5. dead code is gone


def test_dead_code_removed():
    from xlplastic import metrics
    from xlplastic.data import tokenizers

    assert not hasattr(tokenizers, "build_tokenizer")
    assert not hasattr(metrics, "Timer")


# 6. punct="exclude" is a rule on the gold UPOS tag, and is described as such


def test_punct_exclude_is_by_upos_tag():
    from xlplastic.tasks import metrics

    # word 2 is tagged PUNCT (excluded whatever its form); word 3 is "%" tagged SYM (scored, though
    # CoNLL-X's eval.pl would skip it as an all-punctuation form)
    gold_heads, gold_rels = [[0, 1, 1, 1]], [["root", "punct", "nmod", "obj"]]
    upos = [["VERB", "PUNCT", "SYM", "NOUN"]]
    pred_heads, pred_rels = [[0, 3, 2, 1]], [["root", "punct", "nmod", "obj"]]
    inc = metrics.attachment_scores(pred_heads, pred_rels, gold_heads, gold_rels, upos=upos)
    exc = metrics.attachment_scores(pred_heads, pred_rels, gold_heads, gold_rels, upos=upos, punct="exclude")
    assert inc["uas"] == pytest.approx(2 / 4) and exc["uas"] == pytest.approx(2 / 3)
    doc = metrics.attachment_scores.__doc__
    assert "CoNLL-X style" not in doc and "UPOS is PUNCT" in doc
    with open(os.path.join(REPO, "docs", "tasks.md"), encoding="utf-8") as f:
        assert "CoNLL-X / Stanford convention" not in f.read()


# 7. word translation: the dictionary's target words by default, the whole vocabulary as an option


def _translation_case():
    """20 dictionary pairs (target = source + a little noise) and, in the target text, a distractor
    word nearer than the gold translation for every other query."""
    rng = np.random.default_rng(0)
    n, d = 20, 16
    src = {f"s{i}": rng.normal(size=d) for i in range(n)}
    tgt = {f"t{i}": src[f"s{i}"] + 0.3 * rng.normal(size=d) for i in range(n)}
    tgt.update({f"x{i}": src[f"s{i}"] + 0.01 * rng.normal(size=d) for i in range(0, n, 2)})
    src.update({f"o{i}": rng.normal(size=d) for i in range(5)})  # source words of the text only
    test = [(f"s{i}", f"t{i}") for i in range(n)]
    src_text = [" ".join(f"o{i}" for i in range(5)) + " s0 s1"]
    tgt_text = [" ".join(f"x{i}" for i in range(0, n, 2)) + " t0", "t1 x0"]
    return src, tgt, test, src_text, tgt_text


def test_vocabulary_candidates_never_beat_the_dictionary():
    from xlplastic.analysis import align
    from xlplastic.analysis.runner import translation_vocabularies

    src, tgt, test, src_text, tgt_text = _translation_case()
    p = {}
    for mode in ("dictionary", "vocabulary"):
        sw, tw = translation_vocabularies(test, None, src_text, tgt_text, mode)
        sv, tv = np.stack([src[w] for w in sw]), np.stack([tgt[w] for w in tw])
        p[mode] = align.word_translation(sw, sv, tw, tv, test, methods=("nn", "csls"), k=3)["precision_at_1"]
        if mode == "dictionary":
            assert tw == [t for _, t in test] and sw == [s for s, _ in test]  # what analyze always searched
        else:
            assert set(tw) == set(tgt) and set(sw) == set(src)
    assert p["dictionary"]["nn"] == 1.0
    for m in ("nn", "csls"):
        assert p["vocabulary"][m] <= p["dictionary"][m], (m, p)
    assert p["vocabulary"]["nn"] == pytest.approx(0.5)  # every other query loses to its distractor


def test_translation_candidates_are_checked(tmp_path):
    from xlplastic.analysis.runner import analyze, translation_vocabularies
    from xlplastic.config import AnalysisConfig

    with pytest.raises(UserError, match="expected one of dictionary, vocabulary"):
        translation_vocabularies([("a", "b")], None, [], [], "all")
    with pytest.raises(UserError, match="candidates 'all'"):
        analyze([], AnalysisConfig(), tmp_path / "out", translation_candidates="all")
    assert not (tmp_path / "out").exists()
    # dictionary mode: test and train words, each once, in order
    assert translation_vocabularies([("a", "x"), ("b", "y")], [("a", "z")], ["q r"], ["w"]) == (["a", "b"], ["x", "y", "z"])


# 8. nothing after `done:`


def test_quiet_after_done_silences_late_absl_and_jax_records():
    names = ("absl", "orbax", "jax")
    before = {n: logging.getLogger(n).level for n in names}
    try:
        cli._quiet_after_done()
        for n in names:
            assert logging.getLogger(n).getEffectiveLevel() == logging.CRITICAL
    finally:
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)
        if "absl.logging" in sys.modules:
            sys.modules["absl.logging"].set_verbosity("info")


def test_tiny_run_ends_with_its_done_line(tmp_path):
    """A tiny pretraining run, stdout and stderr in one stream: the last line is `done: ...`, also with
    an absl warning emitted at interpreter exit (as Orbax/JAX teardown does on some platforms)."""
    code = (
        "import atexit, sys\n"
        "from absl import logging\n"
        "atexit.register(lambda: logging.warning('late teardown noise'))\n"
        "from xlplastic.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "XLPLASTIC_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-c", code, "run", os.path.join(REPO, "configs", "tiny.yaml"), "--run-dir",
           str(tmp_path / "run"), "--set", "train.steps=4", "--set", "train.progress=false", "--set",
           "checkpoint.every=0", "--set", "train.eval_batches=1"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-3000:]
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    assert lines[-1].startswith("done: step 4"), p.stdout[-3000:]
    assert "late teardown noise" not in p.stdout
    assert sum("XLA compilation cache:" in l for l in lines) == 1


# 9. the compilation cache is said once per process


def test_compilation_cache_said_once(capsys, monkeypatch):
    where = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not where:
        pytest.skip("no JAX_COMPILATION_CACHE_DIR (conftest sets one)")
    monkeypatch.setattr(cli, "_CACHE_SAID", False)
    cli._compilation_cache()
    cli._compilation_cache()
    out = capsys.readouterr().out.splitlines()
    assert out == [f"xlplastic: XLA compilation cache: {where} (the first run compiles; later runs reuse it)"]


def test_compilation_cache_quiet_elsewhere(capsys, monkeypatch):
    import argparse

    monkeypatch.setattr(cli, "_CACHE_SAID", False)
    cli._compilation_cache(argparse.Namespace(process_id=1))  # a known non-zero process: quiet
    monkeypatch.setattr(cli, "_CACHE_SAID", False)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # the cache turned off: nothing to say
    cli._compilation_cache()
    assert capsys.readouterr().out == ""


def test_missing_process_id_is_a_user_error(monkeypatch):
    """(item 1) --coordinator and --num-processes 2 without this process's index: one line, not a TypeError."""
    import argparse

    monkeypatch.delenv("XLPLASTIC_PROCESS_ID", raising=False)
    args = argparse.Namespace(coordinator="localhost:1", num_processes=2, process_id=None, distributed=False)
    with pytest.raises(UserError, match=r"expected this process's index, 0\.\.1"):
        cli._distributed_init(args)
    with pytest.raises(UserError, match="is 2 with"):
        cli._distributed_init(argparse.Namespace(**{**vars(args), "process_id": 2}))
