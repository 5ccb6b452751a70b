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
ONSETS = ("", "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "kl", "st", "tr", "sh")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
CODAS = ("", "", "", "n", "r", "s", "l", "m", "k")


@dataclass(frozen=True)
class Grammar:
    """The language itself: vocabulary, classes and all probability tables."""

    words: tuple[str, ...]  # [V]
    word_class: np.ndarray  # [V] class index of each word
    start: np.ndarray  # [C] first-class distribution
    next_class: np.ndarray  # [V, C] next-class distribution of each word (its signature)
    word_given_class: np.ndarray  # [T, C, V] P(word | class, topic); zero outside the class
    kind: str = "bigram"

    @property
    def number(self) -> np.ndarray:
        """[V] grammatical number of each word: none in this grammar (see phrase.py)."""
        return np.zeros(len(self.words), np.int64)

    def sample_ids(self, n: int, rng: np.random.Generator, topic_probs=None):
        return sample_ids(self, n, rng, topic_probs)

    def frequencies(self) -> np.ndarray:
        return word_frequencies(self)


@dataclass(frozen=True)
class SyntheticCorpus:
    sentences: list[list[str]]
    tags: list[list[str]]  # gold POS tag (class name) per word
    topics: list[int]  # topic of each sentence


def pseudo_words(n: int, rng: np.random.Generator) -> list[str]:
    """n distinct pronounceable words of 1-3 syllables (short words first, like real lexica)."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        k = 1 + int(rng.choice(3, p=[0.25, 0.5, 0.25]))
        w = "".join(
            ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))] + CODAS[rng.integers(len(CODAS))]
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
    words = tuple(pseudo_words(V, rng))
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


def _topic_cdf(topic_probs) -> np.ndarray:
    """Cumulative topic distribution from non-negative weights (normalised; checked by the caller)."""
    p = np.asarray(topic_probs, dtype=np.float64)
    if p.shape != (NUM_TOPICS,) or not np.all(np.isfinite(p)) or (p < 0).any() or p.sum() <= 0:
        raise UserError(f"topic distribution {list(map(float, p.ravel()))}; expected {NUM_TOPICS} "
                        "non-negative weights with a positive sum")
    cum = np.cumsum(p)
    return cum / cum[-1]


def sample_ids(grammar: Grammar, num_sentences: int, rng: np.random.Generator,
               topic_probs=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Word ids of `num_sentences` sentences, drawn with `rng` (vectorised over sentences).

    Returns ids [S, MAX_LEN] (row s uses its first lengths[s] entries), lengths [S] and topics [S].
    `topic_probs` (weights over the NUM_TOPICS topics, normalised) replaces the uniform topic draw;
    the default consumes `rng` exactly as `sample` always did, so its output is unchanged.
    """
    S = num_sentences
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, size=S)
    if topic_probs is None:
        topics = rng.integers(NUM_TOPICS, size=S)
    else:
        topics = _draw(np.broadcast_to(_topic_cdf(topic_probs), (S, NUM_TOPICS)), rng.random(S))
    C, V = len(CLASSES), len(grammar.words)
    cum_start = np.cumsum(grammar.start)
    cum_next = np.cumsum(grammar.next_class, -1)
    cum_word = np.cumsum(grammar.word_given_class, -1).reshape(NUM_TOPICS * C, V)  # [T*C, V]
    ids = np.empty((S, MAX_LEN), dtype=np.int64)
    cls = _draw(np.broadcast_to(cum_start, (S, len(cum_start))), rng.random(S))
    for t in range(MAX_LEN):
        # Same draw as _draw(cum_word[topics, cls], u) -- count of cdf entries below u -- but by binary
        # search per (topic, class) group instead of an [S, V] comparison: ~100x faster at V = 1000.
        u = rng.random(S)
        key = topics * C + cls
        order = np.argsort(key, kind="stable")
        bounds = np.searchsorted(key[order], np.arange(NUM_TOPICS * C + 1))
        col = np.empty(S, dtype=np.int64)
        for g in np.flatnonzero(np.diff(bounds)):
            rows = order[bounds[g]: bounds[g + 1]]
            col[rows] = np.searchsorted(cum_word[g], u[rows], side="left")
        ids[:, t] = np.minimum(col, V - 1)
        cls = _draw(cum_next[ids[:, t]], rng.random(S))
    return ids, lengths, topics


def sample(grammar: Grammar, num_sentences: int, seed: int, topic_probs=None) -> SyntheticCorpus:
    """Samples sentences from `grammar`, all sentences in parallel (vectorised over sentences).

    `topic_probs`: optional topic weights (domain shift); None keeps the uniform draw (and the output).
    """
    rng = np.random.default_rng([seed, 0x5A3])
    ids, lengths, topics = sample_ids(grammar, num_sentences, rng, topic_probs)
    sentences, tags = [], []
    for s in range(num_sentences):
        row = ids[s, : lengths[s]]
        sentences.append([grammar.words[i] for i in row])
        tags.append([CLASSES[grammar.word_class[i]] for i in row])
    return SyntheticCorpus(sentences, tags, [int(t) for t in topics])


def word_frequencies(grammar: Grammar, topic_probs=None) -> np.ndarray:
    """[V] expected occurrences of each word per sentence (exact, from the grammar's tables).

    Sentence lengths are uniform in MIN_LEN..MAX_LEN and topics uniform unless `topic_probs` is given;
    a frequency ranking of the vocabulary that needs no sampling.
    """
    pt = np.full(NUM_TOPICS, 1.0 / NUM_TOPICS) if topic_probs is None else np.diff(_topic_cdf(topic_probs), prepend=0.0)
    p_cls = np.broadcast_to(grammar.start, (NUM_TOPICS, len(grammar.start))).copy()  # [T, C] at position t
    total = np.zeros(len(grammar.words))
    n_len = MAX_LEN - MIN_LEN + 1
    for t in range(MAX_LEN):
        alive = min(n_len, MAX_LEN - t) / n_len  # P(length > t)
        p_word = np.einsum("tc,tcv->tv", p_cls, grammar.word_given_class)  # [T, V]
        total += alive * (pt @ p_word)
        p_cls = p_word @ grammar.next_class
    return total


def generate(num_sentences: int, num_words: int, seed: int) -> SyntheticCorpus:
    """Sentences with gold POS tags and topics from the language drawn by `seed`."""
    return sample(make_grammar(num_words, seed), num_sentences, seed)


def generate_corpus(num_sentences: int, num_words: int, seed: int) -> list[str]:
    """Sentences as plain text, words joined by spaces."""
    return [" ".join(s) for s in generate(num_sentences, num_words, seed).sentences]
