"""Structural lab tasks on the phrase grammar: labels that are functions of the class sequence alone.

Why: a task that transfers through relearned embeddings must live in the body, as reasoning does in
XNLI, not in which words occur (the lab's topic label is lexical, so it lives in exactly the embeddings
a new language replaces: a useful negative control). Here every label is decided by the fine class
sequence (UPOS + Number, `phrase.tags`) of the base sentences, so a new-language embedding that
recovers each word's class and number carries the task over, and one that does not, fails it.

  nli        sentence pairs shaped like XNLI, three balanced labels. The hypothesis re-draws every word
             of a skeleton from its class, number and the premise's topic, never the premise's word at
             the same position when its class has another:
               entailment     the premise's skeleton
               contradiction  the premise's skeleton with the negation of one clause toggled
               neutral        the skeleton of another sentence
             Premises are negated in half of their clauses, so "the hypothesis is negated" alone says
             nothing; only the comparison does. `nli_rule` recovers the label from the two tag sequences.
  agreement  single sentences, two balanced labels (BLiMP-like): `ok`, or `violation`, the same sentence
             with the finite verb (or auxiliary) of one clause in the other number. The subject head can
             be several words away, across adjectives, a numeral and a prepositional phrase whose noun
             may have the other number (an attractor). `agreement_rule` checks every clause's subject
             head against its finite verb.

Task sentences have at most TASK_MAX_LEN words, so a pair fits 48 tokens with one token per word.
Everything is drawn from an explicit NumPy generator: deterministic.
"""

from __future__ import annotations

import numpy as np

from xlplastic.data.phrase import PL, SG, C, PhraseGrammar, Slot

NLI_LABELS = ("entailment", "neutral", "contradiction")
AGREEMENT_LABELS = ("ok", "violation")
TASK_MAX_LEN = 20  # words per task sentence: a pair is at most 2 * 20 + 4 = 44 tokens
TASKS = {"nli": NLI_LABELS, "agreement": AGREEMENT_LABELS}
_NOMINAL = ("NOUN", "PRON", "PROPN")
_CLAUSE_BREAK = ("CCONJ", "SCONJ", "PUNCT")


def _clauses(tags):
    """Index lists of the clauses of a tag sequence (split at conjunctions and punctuation)."""
    out, cur = [], []
    for i, (upos, _) in enumerate(tags):
        if upos in _CLAUSE_BREAK:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(i)
    return out + ([cur] if cur else [])


def agreement_rule(tags) -> str:
    """`violation` if some clause's first nominal (its subject head) and first VERB/AUX differ in number."""
    for clause in _clauses(tags):
        subj = next((tags[i] for i in clause if tags[i][0] in _NOMINAL), None)
        verb = next((tags[i] for i in clause if tags[i][0] in ("VERB", "AUX")), None)
        if subj is not None and verb is not None:
            number = "Sing" if subj[0] == "PROPN" else subj[1]
            if number != verb[1]:
                return "violation"
    return "ok"


def nli_rule(tags_a, tags_b) -> str:
    """The label of a pair from its two (UPOS, Number) sequences alone."""
    a, b = list(tags_a), list(tags_b)
    if a == b:
        return "entailment"
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    if len(longer) == len(shorter) + 1:
        for i, t in enumerate(longer):
            if t[0] == "PART" and longer[:i] + longer[i + 1:] == shorter:
                return "contradiction"
    return "neutral"


def _toggle_negation(slots: list[Slot], clause: int) -> list[Slot]:
    """The skeleton with `clause`'s negation removed if it has one, else inserted where the grammar
    puts it (before the verb, or after the auxiliary)."""
    neg = [i for i, s in enumerate(slots) if s.clause == clause and s.role == "neg"]
    if neg:
        return _shift(slots[: neg[0]] + slots[neg[0] + 1:], neg[0], -1)
    at = next(i for i, s in enumerate(slots) if s.clause == clause and s.role in ("verb", "aux"))
    at += 1 if slots[at].role == "aux" else 0
    return _shift(slots[:at] + [Slot(C["PART"], 0, clause, "neg")] + slots[at:], at, +1)


def _shift(slots: list[Slot], at: int, by: int) -> list[Slot]:
    """Dependency indices after an insertion (+1) or a removal (-1) at position `at`."""
    return [Slot(s.cls, s.num, s.clause, s.role, s.dep + by if s.dep >= at else s.dep) for s in slots]


def _premise(grammar: PhraseGrammar, rng) -> list[Slot]:
    while True:
        slots = grammar.skeleton(rng, TASK_MAX_LEN - 1)
        for c in sorted({s.clause for s in slots}):  # negated in half of the clauses
            has = any(s.clause == c and s.role == "neg" for s in slots)
            if has != (rng.random() < 0.5):
                slots = _toggle_negation(slots, c)
        if len(slots) <= TASK_MAX_LEN:
            return slots


def nli_pairs(grammar: PhraseGrammar, n: int, rng: np.random.Generator, topic_probs=None):
    """n pairs (premise ids, hypothesis ids, label), exactly balanced over NLI_LABELS in random order."""
    from xlplastic.data.phrase import draw_topics, tags

    labels = rng.permutation(np.arange(n) % 3)
    topics = draw_topics(n, rng, topic_probs)
    out = []
    while len(out) < n:
        k = len(out)
        label, topic = NLI_LABELS[labels[k]], int(topics[k])
        sa = _premise(grammar, rng)
        a = grammar.lexicalize(sa, topic, rng)
        if label == "entailment":
            sb = sa
        elif label == "contradiction":
            sb = _toggle_negation(sa, int(rng.integers(sa[-1].clause + 1)))
        else:
            sb = _premise(grammar, rng)
        b = grammar.lexicalize(sb, topic, rng, avoid=a if len(sb) == len(sa) else None)
        if nli_rule(tags(grammar, a), tags(grammar, b)) == label:  # rejects a neutral that happens to match
            out.append((a, b, label))
    return out


def agreement_items(grammar: PhraseGrammar, n: int, rng: np.random.Generator, topic_probs=None):
    """n (ids, label) sentences, exactly balanced over AGREEMENT_LABELS in random order."""
    from xlplastic.data.phrase import draw_topics

    labels = rng.permutation(np.arange(n) % 2)
    topics = draw_topics(n, rng, topic_probs)
    out = []
    for k in range(n):
        slots = grammar.skeleton(rng, TASK_MAX_LEN)
        ids = grammar.lexicalize(slots, int(topics[k]), rng)
        if AGREEMENT_LABELS[labels[k]] == "violation":
            clause = int(rng.integers(slots[-1].clause + 1))
            v = next(i for i, s in enumerate(slots) if s.clause == clause and s.role in ("verb", "aux"))
            forms = grammar.forms["VERB" if slots[v].cls == C["VERB"] else "AUX"]
            lemma = int(grammar.lemma[ids[v]])
            ids = ids.copy()
            ids[v] = forms[lemma, 0 if slots[v].num == PL else 1]
        out.append((ids, AGREEMENT_LABELS[labels[k]]))
    return out


__all__ = ["NLI_LABELS", "AGREEMENT_LABELS", "TASKS", "TASK_MAX_LEN", "agreement_items", "agreement_rule",
           "nli_pairs", "nli_rule", "SG", "PL"]
