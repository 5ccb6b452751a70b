"""A small generated language for quick trials and tests, with gold tags.

Why: a pretraining run needs text with real structure (syntax, topics, word-specific behaviour) that
is tiny, free, deterministic and fully known, so quick trials run offline and probes have gold labels.

The language is a probabilistic class-bigram grammar:
  * 16 word classes (named after UD tags, which serve as gold POS tags) with a sparse class
    transition matrix;
  * words of a class have their own Zipfian frequencies, shifted by the sentence's topic;
  * every word has its own preferred next classes (a private mix of the class row), so words of one
    class are NOT exchangeable: their contexts differ;
  * sentences are 8-30 words; words are pronounceable pseudo-words built from syllables.

Generation is split into `make_grammar` (the language) and `sample` (its sentences) so that later
transformations (vocabulary permutation, word-order change) can act on either without touching this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xlplastic.errors import UserError

CLASSES: tuple[str, ...] = (
    "NOUN", "VERB", "ADJ", "ADV", "PROPN", "DET", "ADP", "PRON",
    "AUX", "CCONJ", "SCONJ", "PART", "NUM", "INTJ", "X", "PUNCT",
)
# Relative share of the vocabulary per class: open classes are large, function classes small.
_CLASS_SIZE = np.array([10, 7, 5, 3, 4, 1, 1, 1, 1, 0.5, 0.5, 0.5, 1, 0.5, 1, 0.5])
_OPEN = np.array([c in ("NOUN", "VERB", "ADJ", "ADV", "PROPN") for c in CLASSES])

NUM_TOPICS = 4
MIN_LEN, MAX_LEN = 8, 30
_ONSETS = ("", "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "kl", "st", "tr", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "s", "l", "m", "k")


@dataclass(frozen=True)
class Grammar:
    """The language itself: vocabulary, classes and all probability tables."""

    words: tuple[str, ...]  # [V]
    word_class: np.ndarray  # [V] class index of each word
    start: np.ndarray  # [C] first-class distribution
    next_class: np.ndarray  # [V, C] next-class distribution of each word (its signature)
    word_given_class: np.ndarray  # [T, C, V] P(word | class, topic); zero outside the class


@dataclass(frozen=True)
class SyntheticCorpus:
    sentences: list[list[str]]
    tags: list[list[str]]  # gold POS tag (class name) per word
    topics: list[int]  # topic of each sentence


def _pseudo_words(n: int, rng: np.random.Generator) -> list[str]:
    """n distinct pronounceable words of 1-3 syllables (short words first, like real lexica)."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        k = 1 + int(rng.choice(3, p=[0.25, 0.5, 0.25]))
        w = "".join(
            _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(k)
        )
        if len(w) >= 2 and w not in seen:
            seen.add(w)
            words.append(w)
    return words


def _class_sizes(num_words: int) -> np.ndarray:
    """Largest-remainder split of the vocabulary over classes, each class at least one word."""
    rest = num_words - len(CLASSES)
    share = _CLASS_SIZE / _CLASS_SIZE.sum() * rest
    sizes = np.floor(share).astype(int)
    order = np.argsort(-(share - sizes), kind="stable")
    sizes[order[: rest - sizes.sum()]] += 1
    return sizes + 1


def make_grammar(num_words: int, seed: int) -> Grammar:
    """Draws a random language with `num_words` words; deterministic in `seed`."""
    if num_words < len(CLASSES):
        raise UserError(f"synthetic_words is {num_words}; expected at least {len(CLASSES)} (one word per class)")
    rng = np.random.default_rng([seed, 0x5E7])
    C, V = len(CLASSES), num_words
    words = tuple(_pseudo_words(V, rng))
    sizes = _class_sizes(V)
    word_class = np.repeat(np.arange(C), sizes)

    # Sparse class grammar: each class allows 3-5 successors with Dirichlet weights.
    trans = np.zeros((C, C))
    for c in range(C):
        succ = rng.choice(C, size=int(rng.integers(3, 6)), replace=False)
        trans[c, succ] = rng.dirichlet(np.full(len(succ), 1.0))
    start = rng.dirichlet(np.full(C, 0.5))

    # Word signatures: half the class row, half a private preference over the same successors.
    private = rng.gamma(0.5, size=(V, C)) * (trans[word_class] > 0)
    private /= private.sum(1, keepdims=True)
    next_class = 0.5 * trans[word_class] + 0.5 * private

    # Zipfian frequencies within each class, tilted per topic for open-class words.
    zipf = np.empty(V)
    for c in range(C):
        idx = np.flatnonzero(word_class == c)
        zipf[idx] = 1.0 / (1.0 + rng.permutation(len(idx))) ** 1.1
    tilt = np.exp(rng.normal(0.0, 1.0, size=(NUM_TOPICS, V)) * _OPEN[word_class])
    onehot = word_class[None, :] == np.arange(C)[:, None]  # [C, V]
    wgc = (zipf * tilt)[:, None, :] * onehot[None]  # [T, C, V]
    wgc /= wgc.sum(-1, keepdims=True)
    return Grammar(words, word_class, start, next_class, wgc)


def _draw(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling, one draw per row of `cum` (rows are cumulative distributions)."""
    return np.minimum((u[:, None] > cum).sum(-1), cum.shape[-1] - 1)


def sample(grammar: Grammar, num_sentences: int, seed: int) -> SyntheticCorpus:
    """Samples sentences from `grammar`, all sentences in parallel (vectorised over sentences)."""
    rng = np.random.default_rng([seed, 0x5A3])
    S = num_sentences
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, size=S)
    topics = rng.integers(NUM_TOPICS, size=S)
    cum_start = np.cumsum(grammar.start)
    cum_next = np.cumsum(grammar.next_class, -1)
    cum_word = np.cumsum(grammar.word_given_class, -1)  # [T, C, V]
    ids = np.empty((S, MAX_LEN), dtype=np.int64)
    cls = _draw(np.broadcast_to(cum_start, (S, len(cum_start))), rng.random(S))
    for t in range(MAX_LEN):
        ids[:, t] = _draw(cum_word[topics, cls], rng.random(S))
        cls = _draw(cum_next[ids[:, t]], rng.random(S))
    sentences, tags = [], []
    for s in range(S):
        row = ids[s, : lengths[s]]
        sentences.append([grammar.words[i] for i in row])
        tags.append([CLASSES[grammar.word_class[i]] for i in row])
    return SyntheticCorpus(sentences, tags, [int(t) for t in topics])


def generate(num_sentences: int, num_words: int, seed: int) -> SyntheticCorpus:
    """Sentences with gold POS tags and topics from the language drawn by `seed`."""
    return sample(make_grammar(num_words, seed), num_sentences, seed)


def generate_corpus(num_sentences: int, num_words: int, seed: int) -> list[str]:
    """Sentences as plain text, words joined by spaces."""
    return [" ".join(s) for s in generate(num_sentences, num_words, seed).sentences]
