"""Tree decoding for parsing: Chu-Liu/Edmonds with one root word, against brute force and in the score path."""

import functools
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from xlplastic.config import TokenizerConfig  # noqa: E402
from xlplastic.data import synthetic  # noqa: E402
from xlplastic.data.tokenizers import special_tokens, train_tokenizer  # noqa: E402
from xlplastic.tasks.features import encode, score  # noqa: E402
from xlplastic.tasks.kinds.parsing import decode  # noqa: E402
from xlplastic.tasks.parse_decode import decode_tree, is_tree, tree_score  # noqa: E402
from xlplastic.tasks.readers import ParsingExample, label_map  # noqa: E402

NEG_INF = -np.inf


@functools.lru_cache(maxsize=None)
def _all_trees(n: int) -> np.ndarray:
    """Every valid tree over n words [M, n]: all n^n head choices (never the word itself), kept when they
    put exactly one word on the root and following heads from every word reaches the root."""
    digits = np.stack(np.unravel_index(np.arange(n**n), (n,) * n), 1)  # choice d of word i: head d, or d + 1 past i
    heads = digits + (digits >= np.arange(1, n + 1))
    parent = np.concatenate([np.zeros((len(heads), 1), np.int64), heads], 1)
    node = np.tile(np.arange(n + 1), (len(heads), 1))
    for _ in range(n):
        node = np.take_along_axis(parent, node, 1)
    return heads[((heads == 0).sum(1) == 1) & (node == 0).all(1)]


def _best_total(scores: np.ndarray) -> float:
    n = len(scores)
    return float(scores[np.arange(n), _all_trees(n)].sum(1).max())


def test_brute_force_enumerates_every_tree():
    # a tree with one word on the root is a rooted labelled tree on the n words: n^(n-1) of them (Cayley)
    assert [len(_all_trees(n)) for n in range(1, 7)] == [n ** (n - 1) for n in range(1, 7)]


def test_breaks_a_cycle_and_keeps_one_root_word():
    # scores[i, j]: word i + 1 under head j (0 = root); the self-loops hold 100 and must be ignored
    scores = np.array([[5.0, 100.0, 10.0, 1.0],   # word 1: root 5, under 2: 10, under 3: 1
                       [1.0, 10.0, 100.0, 2.0],   # word 2: root 1, under 1: 10, under 3: 2
                       [7.0, 6.0, 3.0, 100.0]])   # word 3: root 7, under 1: 6,  under 2: 3
    greedy = np.array([2, 1, 0])  # the argmax without self-loops: 1 <-> 2 is a cycle
    assert not is_tree(greedy)
    # without the one-root rule the best would be 1 -> root, 2 -> 1, 3 -> root (5 + 10 + 7 = 22);
    # with it: 1 -> root, 2 -> 1, 3 -> 1 = 5 + 10 + 6 = 21 (next best: 3 -> root, 1 -> 2, 2 -> 3 = 19)
    heads = decode_tree(scores)
    assert heads.tolist() == [0, 1, 1] and tree_score(scores, heads) == 21.0
    assert _best_total(scores) == 21.0  # brute force over all trees agrees


def test_matches_brute_force_on_random_scores():
    rng = np.random.default_rng(0)
    for case in range(200):
        n = int(rng.integers(2, 8))
        scores = rng.normal(size=(n, n + 1)) * rng.choice([0.1, 1.0, 30.0])
        if case % 4 == 0:  # many ties
            scores = rng.integers(0, 3, size=(n, n + 1)).astype(float)
        scores[np.eye(n, n + 1, k=1, dtype=bool)] = NEG_INF
        heads = decode_tree(scores)
        assert is_tree(heads), (case, heads)
        assert tree_score(scores, heads) == pytest.approx(_best_total(scores), abs=1e-9), case


def test_always_a_tree():
    rng = np.random.default_rng(1)
    for n in [1, 2, 3, 10, 40, 120]:
        for spread in (1e-3, 1.0, 1e3):
            scores = rng.normal(size=(n, n + 1)) * spread
            scores[:, 0] += 5 * spread  # every word prefers the root: the one-root rule has work to do
            heads = decode_tree(scores)
            assert heads.shape == (n,) and is_tree(heads), (n, spread)
    forbidden = np.zeros((3, 4))
    forbidden[1:, 0] = NEG_INF  # only word 1 may hang on the root
    assert decode_tree(forbidden)[0] == 0
    assert decode_tree(np.zeros((0, 1))).shape == (0,)


def test_no_tree_and_bad_shapes_fail():
    with pytest.raises(ValueError, match="no allowed head"):
        decode_tree(np.array([[NEG_INF, NEG_INF]]))
    with pytest.raises(ValueError, match="one root word"):
        decode_tree(np.array([[0.0, NEG_INF, NEG_INF], [0.0, NEG_INF, NEG_INF]]))  # both words need the root
    with pytest.raises(ValueError, match=r"expected \[n, n \+ 1\]"):
        decode_tree(np.zeros((3, 3)))


def test_is_tree():
    assert is_tree([0]) and is_tree([2, 0, 2]) and is_tree([])
    assert not is_tree([0, 0])  # two root words
    assert not is_tree([2, 1, 0])  # cycle 1 <-> 2
    assert not is_tree([1, 0])  # word 1 heads itself
    assert not is_tree([0, 3])  # no word 3


# ----------------------------------------------------------------------------- the parsing score path


@pytest.fixture(scope="module")
def corpus():
    return synthetic.generate(300, 200, 0)


@pytest.fixture(scope="module")
def tok(corpus):
    tokenizer = train_tokenizer([" ".join(s) for s in corpus.sentences], TokenizerConfig(kind="bpe", vocab_size=300))
    return tokenizer, special_tokens(tokenizer)


def _random_tree(rng, n):
    """Heads of a random tree (0 = root, one root word); heads may come before or after their word."""
    order = rng.permutation(n) + 1
    heads = [0] * n
    for i, w in enumerate(order[1:], 1):
        heads[w - 1] = int(order[rng.integers(i)])
    return heads


def _parse(words, heads, rng):
    return ParsingExample(tuple(words), ("X",) * len(words), tuple(heads),
                          tuple(rng.choice(["nsubj", "obj", "nmod:poss", "root"], len(words))))


def _predictions(f, rng, margin=100.0):
    """Arc scores: noise, plus `margin` at every trained gold arc; every head candidate gets the gold rel."""
    heads, mask = f.arrays["heads"], f.arrays["word_mask"] > 0
    N, W = heads.shape
    arc = rng.normal(size=(N, W, W + 1)).astype(np.float32)
    n, w = np.nonzero(mask & (heads >= 0))
    arc[n, w, heads[n, w]] += margin
    rel = np.broadcast_to(f.arrays["rels"][:, :, None], (N, W, W + 1)).astype(np.int8)
    return {"arc_scores": arc, "rel_by_head": rel}


def test_score_takes_the_tree_not_each_words_argmax(tok, corpus):
    tokenizer, sp = tok
    rng = np.random.default_rng(0)
    examples = [_parse(corpus.sentences[0][:6], [2, 0, 2, 3, 2, 5], rng),
                _parse(corpus.sentences[1][:5], [0, 1, 2, 3, 4], rng)]
    lm = label_map(examples)
    f = encode("parsing", examples, tokenizer, sp, 64, lm)
    assert f.meta["truncated_words"].sum() == 0
    pred = _predictions(f, rng)
    pred["arc_scores"][0, 3, 0] = 110.0  # word 4 of sentence 0 would rather hang on the root: two root words
    greedy = pred["arc_scores"].argmax(-1)
    assert not is_tree(greedy[0, :6])
    heads = decode(pred, f)["heads"]
    assert heads[0, :6].tolist() == [2, 0, 2, 3, 2, 5] and heads[1, :5].tolist() == [0, 1, 2, 3, 4]
    assert score("parsing", pred, f, examples, lm) == {"uas": 1.0, "las": 1.0}
    argmax_heads = {"heads": greedy, "rels": f.arrays["rels"]}  # already-decided heads are scored as given
    assert score("parsing", argmax_heads, f, examples, lm)["uas"] == pytest.approx(10 / 11)


def test_truncated_heads_still_decode_into_trees_and_count_as_errors(tok, corpus):
    tokenizer, sp = tok
    rng = np.random.default_rng(1)
    sentences = [s[:9] for s in corpus.sentences if len(s) >= 9][:9]
    examples = [_parse(s, _random_tree(rng, 9), rng) for s in sentences[:8]]
    examples.append(_parse(sentences[8], [9] * 8 + [0], rng))  # all under the last word, which is cut away
    lm = label_map(examples)
    f = encode("parsing", examples, tokenizer, sp, 10, lm)
    kept, heads = f.meta["kept_words"], f.arrays["heads"]
    assert (kept < 9).all() and (heads[-1, : kept[-1]] == -1).all()
    pred = _predictions(f, rng)
    decoded = decode(pred, f)["heads"]
    for n, k in enumerate(kept):
        assert is_tree(decoded[n, :k]), (n, decoded[n, :k])
    # the trained arcs always fit in one tree, and they outweigh the noise on the untrained words
    trained = int(((heads >= 0) & (f.arrays["word_mask"] > 0)).sum())
    total = sum(len(e.words) for e in examples)
    assert trained < total
    assert score("parsing", pred, f, examples, lm) == pytest.approx({"uas": trained / total, "las": trained / total})
