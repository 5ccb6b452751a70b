"""Downstream-task metrics, following the reference scorers so numbers compare with published ones.

Accuracy (NLI, POS), conlleval-style span F1 (NER), the official SQuAD v1.1 EM/F1 (XQuAD, MLQA) and
UAS/LAS (UD parsing). Conventions are spelled out in docs/tasks.md.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

from xlplastic.tasks.formats import QAExample


def _same_length(a: Sequence, b: Sequence, what: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{what}: {len(a)} predictions for {len(b)} gold items; expected equal lengths")


def accuracy(pred: Sequence, gold: Sequence) -> float:
    """Fraction of equal items (0.0 for empty input)."""
    _same_length(pred, gold, "accuracy")
    return sum(p == g for p, g in zip(pred, gold)) / len(gold) if len(gold) else 0.0


def token_accuracy(pred_seqs, gold_seqs) -> float:
    """Accuracy over all tokens of all sequences (so long sentences weigh more, as in UD POS scores)."""
    _same_length(pred_seqs, gold_seqs, "token_accuracy")
    for p, g in zip(pred_seqs, gold_seqs):
        _same_length(p, g, "token_accuracy (one sentence)")
    return accuracy([t for s in pred_seqs for t in s], [t for s in gold_seqs for t in s])


def spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, start, end_exclusive) entity spans from IOB2 tags, with conlleval's lenient rules.

    An I-X that does not continue an X span starts a new one (so IOB1 also works); a B- tag, an O or
    a type change ends the current span.
    """
    out, start, kind = set(), 0, None
    for i, tag in enumerate(list(tags) + ["O"]):  # the sentinel closes a span at the end
        prefix, _, new = tag.partition("-")
        if tag != "O" and (prefix not in ("B", "I") or not new):
            raise ValueError(f"tag {tag!r} at position {i} is not IOB2; expected O, B-TYPE or I-TYPE")
        if kind is not None and (tag == "O" or prefix == "B" or new != kind):
            out.add((kind, start, i))
            kind = None
        if tag != "O" and kind is None:
            start, kind = i, new
    return out


def _prf(correct: int, n_pred: int, n_gold: int) -> dict:
    p = correct / n_pred if n_pred else 0.0
    r = correct / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def span_f1(pred_seqs, gold_seqs) -> dict:
    """Micro precision/recall/F1 over exact (type, start, end) span matches; partial overlaps count as wrong."""
    _same_length(pred_seqs, gold_seqs, "span_f1")
    correct = n_pred = n_gold = 0
    for p, g in zip(pred_seqs, gold_seqs):
        _same_length(p, g, "span_f1 (one sentence)")
        ps, gs = spans(p), spans(g)
        correct, n_pred, n_gold = correct + len(ps & gs), n_pred + len(ps), n_gold + len(gs)
    return _prf(correct, n_pred, n_gold)


_PUNCT = set(string.punctuation)  # ASCII only, exactly as the official v1.1 script


def normalize_answer(s: str) -> str:
    """Official SQuAD v1.1 normalisation: lower case, drop punctuation, drop articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def squad_exact_match(prediction: str, ground_truths: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised ground truth."""
    return max((float(normalize_answer(prediction) == normalize_answer(g)) for g in ground_truths), default=0.0)


def _token_f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


def squad_f1(prediction: str, ground_truths: Sequence[str]) -> float:
    """Bag-of-tokens F1 after normalisation, best over the ground truths."""
    return max((_token_f1(prediction, g) for g in ground_truths), default=0.0)


def squad_scores(predictions: dict[str, str], examples: Sequence[QAExample]) -> dict:
    """{"exact_match", "f1"} in percent over all questions, as the official script (a missing id scores 0).

    A question without answers (SQuAD v2 style) scores 1 for both when the prediction normalises to the
    empty string, as in the v2 script; answered questions are scored exactly as by the v1.1 script.
    """
    em = f1 = 0.0
    for ex in (ex for ex in examples if ex.id in predictions):
        pred, truths = predictions[ex.id], [text for text, _ in ex.answers]
        if truths:
            em, f1 = em + squad_exact_match(pred, truths), f1 + squad_f1(pred, truths)
        else:
            em, f1 = em + (normalize_answer(pred) == ""), f1 + (normalize_answer(pred) == "")
    n = len(examples)
    return {"exact_match": 100.0 * em / n if n else 0.0, "f1": 100.0 * f1 / n if n else 0.0}


def attachment_scores(pred_heads, pred_rels, gold_heads, gold_rels, *, upos=None, punct: str = "include") -> dict:
    """{"uas", "las"} as fractions over scored words; inputs are per-sentence sequences.

    Deprel subtypes are stripped before comparing (`nmod:poss` == `nmod`, CoNLL 2018). punct="include"
    scores every word (CoNLL 2018); punct="exclude" skips words whose gold UPOS is PUNCT (a tag rule,
    not CoNLL-X eval.pl's, which skips words whose form is all punctuation characters).
    """
    if punct not in ("include", "exclude"):
        raise ValueError(f"punct={punct!r}; expected 'include' or 'exclude'")
    if punct == "exclude" and upos is None:
        raise ValueError("punct='exclude' needs the gold upos of every word to find the punctuation")
    for seqs in (pred_rels, gold_heads, gold_rels) + ((upos,) if upos is not None else ()):
        _same_length(pred_heads, seqs, "attachment_scores")
    n = uas = las = 0
    for i, (ph, pr, gh, gr) in enumerate(zip(pred_heads, pred_rels, gold_heads, gold_rels)):
        tags = upos[i] if upos is not None else [""] * len(gh)
        for seq in (ph, pr, gr, tags):
            _same_length(seq, gh, f"attachment_scores (sentence {i})")
        for h, r, g, grel, tag in zip(ph, pr, gh, gr, tags):
            if punct == "exclude" and tag == "PUNCT":
                continue
            n += 1
            if int(h) == int(g):
                uas += 1
                las += r.split(":")[0] == grel.split(":")[0]
    return {"uas": uas / n if n else 0.0, "las": las / n if n else 0.0}
