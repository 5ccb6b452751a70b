"""A phrase-structure lab language: clauses, noun phrases, agreement, negation, selectional preferences.

Why: a transfer task must be something the body computes, and a body only learns what its language
makes it compute. The class-bigram grammar (synthetic.py) has no structure beyond adjacent classes,
most of its tokens come from a few function words, and a small model learns it in a few steps and
then nothing more. This one is built like the artificial languages of White & Cotterell (2021) and
the agreement studies of Linzen et al. (2016):

  S      -> CL PUNCT | CL CONJ CL PUNCT | INTJ CL PUNCT
  CL     -> SUBJ[n] PRED[n]                      (number n agrees across the clause)
  SUBJ   -> NP[n] | PRON[n] | PROPN (n = sg)
  NP[n]  -> DET[n] (NUM, n = pl) ADJ* NOUN[n] (PP)   (a PP inside the subject is an agreement attractor)
  PRED   -> (PART) VERB[n] (OBJ) (ADV) (PP) | AUX[n] (PART) ADJ
  OBJ    -> NP[m] | PRON[m];   PP -> ADP NP[m]   (m drawn afresh)

Words: nouns, verbs, determiners, pronouns and auxiliaries have a singular and a plural form (two word
types per lemma); PART is negation. Lexical choice gives every word a distributional signature of its
own: a verb's subjects, objects and adverbs, a noun's adjectives and a preposition's nouns follow
affinities drawn per word pair, and open-class lemmas are tilted by the sentence's topic (4 topics).

A sentence is first a skeleton of slots (class, number, what it depends on), then words; structural
tasks (lab_tasks.py) edit skeletons and re-draw words, so their labels are functions of the classes.
Deterministic in (num_words, seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xlplastic.data.synthetic import CLASSES, MAX_LEN, NUM_TOPICS, pseudo_words
from xlplastic.errors import UserError

C = {name: i for i, name in enumerate(CLASSES)}
NONE, SG, PL = 0, 1, 2
NUMBER_NAMES = ("", "Sing", "Plur")
INFLECTED = ("NOUN", "VERB", "DET", "PRON", "AUX")  # a singular and a plural form per lemma
# Closed classes: (lemmas at 200 words, grows with the vocabulary); numbers of forms follow INFLECTED.
_CLOSED = {"DET": 3, "PRON": 3, "AUX": 2, "ADP": 5, "CCONJ": 2, "SCONJ": 2, "PART": 1, "NUM": 4, "INTJ": 2,
           "X": 2, "PUNCT": 1}
# Open classes share the remaining word types in these proportions (of types, not lemmas).
_OPEN = {"NOUN": 0.36, "VERB": 0.22, "ADJ": 0.2, "ADV": 0.08, "PROPN": 0.14}
MIN_WORDS = 48
AFFINITY = 1.5  # scale of the per-word-pair affinities (log-odds): how strongly words select each other
TOPIC_TILT = 1.0  # scale of the per-topic tilt of open-class lemmas
P_SINGULAR = 0.7  # share of singular noun phrases


@dataclass(frozen=True)
class Slot:
    """One position of a skeleton: its class, number, clause, and the slot its word depends on."""

    cls: int
    num: int = NONE
    clause: int = 0
    role: str = ""  # subj / obj / pp (nominal heads), verb, neg, adj, adv, ... (lexical choice)
    dep: int = -1  # index of the slot this word's choice depends on (-1: none)


@dataclass(frozen=True)
class PhraseGrammar:
    """The language: lexicon (forms per lemma), affinities, topic tilts. See the module docstring."""

    words: tuple[str, ...]  # [V]
    word_class: np.ndarray  # [V] class index
    number: np.ndarray  # [V] NONE / SG / PL
    lemma: np.ndarray  # [V] lemma index within its class (the forms of one lemma share it)
    forms: dict = field(repr=False)  # class -> [lemmas, 2] word ids (sg, pl) for INFLECTED, [lemmas, 1] else
    weights: dict = field(repr=False)  # (class) -> [T, lemmas] topic-tilted Zipf weights
    affinity: dict = field(repr=False)  # (dep class, class) -> [lemmas of dep, lemmas] multiplicative weights
    kind: str = "phrase"
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # choice CDFs, frequencies

    # --- generation -------------------------------------------------------------------------------
    def skeleton(self, rng: np.random.Generator, max_len: int = MAX_LEN) -> list[Slot]:
        """A random skeleton of at most `max_len` slots (rejection)."""
        while True:
            s = _skeleton(rng)
            if len(s) <= max_len:
                return s

    def lexicalize(self, slots: list[Slot], topic: int, rng: np.random.Generator,
                   avoid: np.ndarray | None = None) -> np.ndarray:
        """Word ids for a skeleton; a slot's lemma depends on its `dep` slot's lemma through the
        affinities. `avoid` (ids of the same length): at each position keep away from that word when
        another of the slot's class and number exists (a re-drawing, not a copy)."""
        lemmas = np.full(len(slots), -1, np.int64)
        out = np.zeros(len(slots), np.int64)
        u = rng.random(len(slots))
        for i in _order(slots):
            s = slots[i]
            name = CLASSES[s.cls]
            dep = CLASSES[slots[s.dep].cls] if s.dep >= 0 else None
            key = (dep, name) if (dep, name) in self.affinity else (None, name)
            row = lemmas[s.dep] if key[0] is not None else 0
            forms = self.forms[name]
            col = 0 if forms.shape[1] == 1 else (1 if s.num == PL else 0)
            cdf = self._cdf(key)[topic, row]
            if avoid is not None and i < len(avoid) and len(cdf) > 1:
                p = np.diff(cdf, prepend=0.0)
                p[forms[:, col] == avoid[i]] = 0.0
                cdf = np.cumsum(p) / p.sum()
            lemmas[i] = min(int(np.searchsorted(cdf, u[i], side="right")), len(cdf) - 1)
            out[i] = forms[lemmas[i], col]
        return out

    def _cdf(self, key: tuple) -> np.ndarray:
        """[T, dep lemmas (1 without a dep), lemmas] cumulative choice distributions (cached)."""
        got = self.cache.get(key)
        if got is None:
            dep, name = key
            w = self.weights[name][:, None, :]  # [T, 1, n]
            if dep is not None:
                w = w * self.affinity[key][None]  # [T, n_dep, n]
            got = np.cumsum(w, -1)
            got /= got[..., -1:]
            self.cache[key] = got
        return got

    def sample_ids(self, n: int, rng: np.random.Generator, topic_probs=None):
        """Like synthetic.sample_ids: ids [n, MAX_LEN], lengths [n], topics [n]."""
        topics = draw_topics(n, rng, topic_probs)
        ids = np.zeros((n, MAX_LEN), np.int64)
        lengths = np.zeros(n, np.int64)
        for k in range(n):
            w = self.lexicalize(self.skeleton(rng), int(topics[k]), rng)
            ids[k, : len(w)] = w
            lengths[k] = len(w)
        return ids, lengths, topics

    def frequencies(self) -> np.ndarray:
        """[V] expected occurrences per sentence, estimated on a fixed sample of max(5000, 10 V)
        sentences (deterministic; add-half smoothing so that every word is ranked); cached."""
        if "freq" not in self.cache:
            n = max(5000, 10 * len(self.words))
            ids, lengths, _ = self.sample_ids(n, np.random.default_rng([0xF2E9]))
            valid = np.arange(MAX_LEN)[None] < lengths[:, None]
            self.cache["freq"] = (np.bincount(ids[valid], minlength=len(self.words)) + 0.5) / n
        return self.cache["freq"].copy()


def draw_topics(n, rng, topic_probs):
    if topic_probs is None:
        return rng.integers(NUM_TOPICS, size=n)
    p = np.asarray(topic_probs, float)
    if p.shape != (NUM_TOPICS,) or not np.all(np.isfinite(p)) or (p < 0).any() or p.sum() <= 0:
        raise UserError(f"topic distribution {list(map(float, p.ravel()))}; expected {NUM_TOPICS} non-negative "
                        "weights with a positive sum")
    return np.minimum(np.searchsorted(np.cumsum(p) / p.sum(), rng.random(n), side="right"), NUM_TOPICS - 1)


def _order(slots: list[Slot]) -> list[int]:
    """Slots in an order where every `dep` comes before the slots depending on it."""
    done: set[int] = set()
    out: list[int] = []

    def visit(i):
        if i in done:
            return
        if slots[i].dep >= 0:
            visit(slots[i].dep)
        done.add(i)
        out.append(i)

    for i in range(len(slots)):
        visit(i)
    return out


def _number(rng) -> int:
    """Singular more often than plural, as in natural languages: the two numbers are not interchangeable,
    so relearning can tell which form is which (a 50/50 split leaves a near-symmetry sg <-> pl)."""
    return SG if rng.random() < P_SINGULAR else PL


def _geom(rng, p_more: float, cap: int) -> int:
    k = 0
    while k < cap and rng.random() < p_more:
        k += 1
    return k


def _np(out: list[Slot], rng, num: int, clause: int, role: str, dep: int, pp: float) -> int:
    """Appends NP[num]; returns the index of its head noun."""
    start = len(out)
    out.append(Slot(C["DET"], num, clause, "det"))
    if num == PL and rng.random() < 0.3:
        out.append(Slot(C["NUM"], NONE, clause, "num"))
    n_adj = _geom(rng, 0.4, 2)
    adj_at = len(out)
    out.extend(Slot(C["ADJ"], NONE, clause, "adj") for _ in range(n_adj))
    head = len(out)
    out.append(Slot(C["NOUN"], num, clause, role, dep))
    for j in range(adj_at, adj_at + n_adj):
        out[j] = Slot(C["ADJ"], NONE, clause, "adj", head)
    if rng.random() < pp:
        _pp(out, rng, clause)
    return head


def _pp(out: list[Slot], rng, clause: int) -> None:
    adp = len(out)
    out.append(Slot(C["ADP"], NONE, clause, "adp"))
    _np(out, rng, _number(rng), clause, "pp", adp, 0.0)


def _clause(out: list[Slot], rng, clause: int) -> None:
    num = _number(rng)
    r = rng.random()
    subj_at = len(out)
    if r < 0.15:
        num = SG
        out.append(Slot(C["PROPN"], SG, clause, "subj"))
    elif r < 0.35:
        out.append(Slot(C["PRON"], num, clause, "subj"))
    else:
        _np(out, rng, num, clause, "subj", -1, 0.3)
    if rng.random() < 0.75:  # verbal predicate; the verb's lemma is drawn first (subject and object depend on it)
        if rng.random() < 0.2:
            out.append(Slot(C["PART"], NONE, clause, "neg"))
        verb = len(out)
        out.append(Slot(C["VERB"], num, clause, "verb"))
        _retarget(out, subj_at, verb)
        if rng.random() < 0.6:
            m = _number(rng)
            if rng.random() < 0.2:
                out.append(Slot(C["PRON"], m, clause, "obj"))
            else:
                _np(out, rng, m, clause, "obj", verb, 0.0)
        if rng.random() < 0.3:
            out.append(Slot(C["ADV"], NONE, clause, "adv", verb))
        if rng.random() < 0.2:
            _pp(out, rng, clause)
    else:  # copular predicate: AUX (PART) ADJ, the adjective chosen by the subject
        out.append(Slot(C["AUX"], num, clause, "aux"))
        if rng.random() < 0.2:
            out.append(Slot(C["PART"], NONE, clause, "neg"))
        head = next((i for i in range(subj_at, len(out)) if out[i].role == "subj"), -1)
        out.append(Slot(C["ADJ"], NONE, clause, "adj", head if out[head].cls == C["NOUN"] else -1))


def _retarget(out: list[Slot], start: int, verb: int) -> None:
    """The clause's subject head (a noun) depends on its verb."""
    for i in range(start, verb):
        s = out[i]
        if s.role == "subj" and s.cls == C["NOUN"]:
            out[i] = Slot(s.cls, s.num, s.clause, s.role, verb)
            return


def _skeleton(rng) -> list[Slot]:
    out: list[Slot] = []
    if rng.random() < 0.05:
        out.append(Slot(C["INTJ"], NONE, 0, "intj"))
    _clause(out, rng, 0)
    r = rng.random()
    if r < 0.25:
        out.append(Slot(C["CCONJ" if r < 0.17 else "SCONJ"], NONE, 0, "conj"))
        _clause(out, rng, 1)
    if rng.random() < 0.03:  # a rare foreign word before the end
        out.append(Slot(C["X"], NONE, int(out[-1].clause), "x"))
    out.append(Slot(C["PUNCT"], NONE, int(out[-1].clause), "punct"))
    return out


def _type_counts(num_words: int) -> dict[str, int]:
    """Lemmas per class: closed classes fixed (a little more with more words), open classes share the rest."""
    scale = max(1, num_words // 400)
    closed = {k: v * (scale if k in ("ADP", "NUM", "INTJ", "X") else 1) for k, v in _CLOSED.items()}
    used = sum(v * (2 if k in INFLECTED else 1) for k, v in closed.items())
    rest = num_words - used
    if rest < 10:
        raise UserError(f"lab.words is {num_words}; expected at least {MIN_WORDS} for the phrase grammar")
    out = dict(closed)
    types = {k: rest * share for k, share in _OPEN.items()}
    for k, t in types.items():
        out[k] = max(1, int(t // (2 if k in INFLECTED else 1)))
    left = rest - sum(out[k] * (2 if k in INFLECTED else 1) for k in _OPEN)
    for k in ("ADJ", "ADV", "PROPN"):  # fill the last types with uninflected words, so the total is exact
        take = left // 3 if k != "PROPN" else left
        out[k] += take
        left -= take
    return out


def make_phrase_grammar(num_words: int, seed: int) -> PhraseGrammar:
    """Draws the language: exactly `num_words` word types; deterministic in `seed`."""
    if num_words < MIN_WORDS:
        raise UserError(f"lab.words is {num_words}; expected at least {MIN_WORDS} for the phrase grammar")
    rng = np.random.default_rng([seed, 0x9A5E])
    counts = _type_counts(num_words)
    words = pseudo_words(num_words, rng)
    order = rng.permutation(num_words)  # which pseudo-word goes to which form: no length cue for the class
    word_class, number, lemma = np.zeros(num_words, np.int64), np.zeros(num_words, np.int64), np.zeros(num_words, np.int64)
    forms: dict[str, np.ndarray] = {}
    nxt = 0
    for name in CLASSES:
        n = counts[name]
        k = 2 if name in INFLECTED else 1
        ids = order[nxt: nxt + n * k].reshape(n, k)
        nxt += n * k
        forms[name] = ids
        word_class[ids] = C[name]
        lemma[ids] = np.arange(n)[:, None]
        number[ids] = [[SG, PL]] if k == 2 else NONE
    assert nxt == num_words
    weights = {}
    for name, ids in forms.items():
        n = len(ids)
        zipf = 1.0 / (1.0 + rng.permutation(n)) ** 1.0
        tilt = np.exp(TOPIC_TILT * rng.normal(size=(NUM_TOPICS, n))) if name in _OPEN else np.ones((NUM_TOPICS, n))
        weights[name] = zipf[None] * tilt
    pairs = [("VERB", "NOUN"), ("NOUN", "ADJ"), ("VERB", "ADV"), ("ADP", "NOUN")]
    affinity = {(dep, cls): np.exp(AFFINITY * rng.normal(size=(len(forms[dep]), len(forms[cls])))) for dep, cls in pairs}
    return PhraseGrammar(tuple(words), word_class, number, lemma, forms, weights, affinity)


def tags(grammar: PhraseGrammar, ids) -> list[tuple[str, str]]:
    """(UPOS, Number or '') per word: the fine class sequence that structural labels are functions of."""
    return [(CLASSES[grammar.word_class[i]], NUMBER_NAMES[grammar.number[i]]) for i in ids]
