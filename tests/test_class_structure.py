"""The class-structure diagnostic (analysis/class_structure.py) against a float64 brute-force transcription."""

from __future__ import annotations

import numpy as np
import pytest

from xlplastic.analysis.class_structure import class_structure, tagged_rows, word_classes
from xlplastic.errors import UserError


def _reference(emb, ids, labels):
    """Float64, loops: the variance share of the class means and the nearest other word's class."""
    x = np.asarray(emb, np.float64)[ids]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = x - x.mean(0)
    labels = np.asarray(labels)
    within = sum(((c[labels == k] - c[labels == k].mean(0)) ** 2).sum() for k in set(labels))
    hits = 0
    for i in range(len(x)):
        sims = [x[i] @ x[j] if j != i else -np.inf for j in range(len(x))]
        hits += labels[int(np.argmax(sims))] == labels[i]
    return {"class_r2": 1 - within / (c**2).sum(), "class_1nn": hits / len(x)}


def _source_reference(emb, ids, labels, ref_emb, ref_ids, ref_labels):
    """Float64, loops: the fraction of rows whose nearest reference row has the same class."""
    unit = lambda m, i: np.asarray(m, np.float64)[i] / np.linalg.norm(np.asarray(m, np.float64)[i], axis=1, keepdims=True)  # noqa: E731
    x, r = unit(emb, ids), unit(ref_emb, ref_ids)
    return sum(ref_labels[int(np.argmax([x[i] @ r[j] for j in range(len(r))]))] == labels[i] for i in range(len(x))) / len(x)


@pytest.mark.parametrize("block", [1024, 7])
def test_equals_the_float64_reference(block):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    ids = rng.choice(300, size=120, replace=False)
    labels = [f"C{k}" for k in rng.integers(5, size=120)]
    emb[ids] += 0.8 * np.eye(16, dtype=np.float32)[[int(s[1:]) for s in labels]]  # some class signal
    got, want = class_structure(emb, ids, labels, block=block), _reference(emb, ids, labels)
    assert got["class_r2"] == pytest.approx(want["class_r2"], abs=1e-5)
    assert got["class_1nn"] == want["class_1nn"]
    assert 0.05 < got["class_r2"] < 0.95


def test_separates_class_geometry_from_noise():
    rng = np.random.default_rng(1)
    labels = [f"C{k}" for k in np.arange(200) % 4]
    centres = rng.normal(size=(4, 32))
    clustered = centres[np.arange(200) % 4] + 0.05 * rng.normal(size=(200, 32))
    noise = rng.normal(size=(200, 32))
    ids = np.arange(200)
    tidy, mess = class_structure(clustered, ids, labels), class_structure(noise, ids, labels)
    assert tidy["class_r2"] > 0.95 and tidy["class_1nn"] == 1.0
    assert mess["class_r2"] < 0.1 and mess["class_1nn"] < 0.45  # chance 0.25


def test_word_classes_and_tagged_rows(tmp_path):
    conllu = "".join(f"{i}\t{w}\t_\t{t}\t_\t_\t0\troot\t_\t_\n" for i, (w, t) in enumerate(
        [("dog", "NOUN"), ("runs", "VERB"), ("run", "NOUN")], start=1)) + "\n"
    conllu += "1\trun\t_\tVERB\t_\t_\t0\troot\t_\t_\n\n1\trun\t_\tVERB\t_\t_\t0\troot\t_\t_\n\n"
    (tmp_path / "a.conllu").write_text(conllu)
    classes = word_classes([tmp_path / "a.conllu"])
    assert classes == {"dog": "NOUN", "runs": "VERB", "run": "VERB"}  # the majority tag

    class Tok:
        def token_to_id(self, w):
            return {"dog": 4, "run": 9}.get(w)

    ids, labels = tagged_rows(Tok(), classes)
    assert ids.tolist() == [4, 9] and labels == ["NOUN", "VERB"]


def test_too_few_words_is_one_line():
    with pytest.raises(UserError, match="expected at least 10"):
        class_structure(np.zeros((5, 4)), np.arange(3), ["A", "B", "A"])


@pytest.mark.parametrize("block", [1024, 7])
def test_source_class_1nn_equals_the_float64_reference(block):
    rng = np.random.default_rng(2)
    labels = [f"C{k}" for k in rng.integers(4, size=90)]
    ref_labels = [f"C{k}" for k in rng.integers(4, size=70)]
    centres = rng.normal(size=(4, 12))
    emb = centres[[int(c[1:]) for c in labels]] + 1.2 * rng.normal(size=(90, 12))
    ref = centres[[int(c[1:]) for c in ref_labels]] + 1.2 * rng.normal(size=(70, 12))
    ids, ref_ids = rng.permutation(90), rng.permutation(70)
    got = class_structure(emb, ids, [labels[i] for i in ids], reference=(ref, ref_ids, [ref_labels[i] for i in ref_ids]),
                          block=block)
    want = _source_reference(emb, ids, [labels[i] for i in ids], ref, ref_ids, [ref_labels[i] for i in ref_ids])
    assert got["source_class_1nn"] == pytest.approx(want, abs=1e-12)
    assert 0.3 < want < 0.95  # neither chance nor perfect: the test can tell a wrong neighbour apart


def test_source_class_1nn_is_one_for_the_source_rows_relabelled():
    """The oracle's rows are the source rows re-indexed through the dictionary: each row's nearest source
    row is itself, so the score is exactly 1 however untidy the classes are."""
    rng = np.random.default_rng(3)
    src = rng.normal(size=(60, 8))
    labels = [f"C{k}" for k in rng.integers(5, size=60)]
    perm = rng.permutation(60)
    oracle = src[perm]  # target word t is source word perm[t]
    got = class_structure(oracle, np.arange(60), [labels[p] for p in perm], reference=(src, np.arange(60), labels))
    assert got["source_class_1nn"] == 1.0 and got["class_1nn"] < 0.6


def test_reference_of_another_width_is_one_line():
    with pytest.raises(UserError, match="width 4.*8"):
        class_structure(np.ones((20, 8)) + np.eye(20, 8), np.arange(20), ["A", "B"] * 10,
                        reference=(np.ones((20, 4)), np.arange(20), ["A", "B"] * 10))
