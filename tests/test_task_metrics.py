"""Task metrics against hand-computed cases (the arithmetic is in the comments)."""

from __future__ import annotations

import pytest

from xlplastic.tasks.metrics import (accuracy, attachment_scores, normalize_answer, span_f1, spans, squad_exact_match,
                                     squad_f1, squad_scores, token_accuracy)
from xlplastic.tasks.readers import QAExample


def test_accuracy_and_token_accuracy():
    assert accuracy(["a", "b", "c", "d"], ["a", "x", "c", "d"]) == 3 / 4
    # 2 of 3 tokens right overall (not the mean of per-sentence 1/2 and 1/1 = 0.75)
    assert token_accuracy([["N", "V"], ["D"]], [["N", "N"], ["D"]]) == pytest.approx(2 / 3)
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="expected equal lengths"):
        accuracy([1], [1, 2])
    with pytest.raises(ValueError, match="one sentence"):
        token_accuracy([["N"]], [["N", "V"]])


def test_spans_conventions():
    assert spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert spans(["O", "I-PER", "I-PER"]) == {("PER", 1, 3)}  # I- without B- starts a span
    assert spans(["B-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 3)}  # type change ends a span
    assert spans(["B-PER", "B-PER", "I-PER"]) == {("PER", 0, 1), ("PER", 1, 3)}  # B- ends the previous span
    assert spans(["B-PER", "O", "I-PER"]) == {("PER", 0, 1), ("PER", 2, 3)}
    assert spans([]) == set() and spans(["O", "O"]) == set()
    for bad in ("E-PER", "PER", "B-"):
        with pytest.raises(ValueError, match="not IOB2"):
            spans(["O", bad])


def test_span_f1_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"],      # (PER,0,2) (LOC,3,4)
            ["O", "B-ORG", "I-ORG", "I-ORG"]]      # (ORG,1,4)
    pred = [["B-PER", "O", "O", "B-LOC"],          # (PER,0,1) partial overlap: wrong; (LOC,3,4) right
            ["I-ORG", "I-ORG", "B-MISC", "I-MISC"]]  # (ORG,0,2) (MISC,2,4): both wrong
    # correct 1, predicted 4, gold 3: P = 1/4, R = 1/3, F1 = 2PR/(P+R) = (1/6)/(7/12) = 2/7
    got = span_f1(pred, gold)
    assert got == pytest.approx({"precision": 1 / 4, "recall": 1 / 3, "f1": 2 / 7})
    assert span_f1([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert span_f1(gold, gold)["f1"] == 1.0
    with pytest.raises(ValueError):
        span_f1(pred[:1], gold)


def test_normalize_answer():
    # lower -> "  the  eiffel-tower, in paris!! "; punctuation -> "  the  eiffeltower in paris ";
    # articles -> "    eiffeltower in paris "; whitespace -> "eiffeltower in paris"
    assert normalize_answer("  The  Eiffel-Tower, in Paris!! ") == "eiffeltower in paris"
    assert normalize_answer("An apple a\tday") == "apple day"
    assert normalize_answer("Theatre and Anna") == "theatre and anna"  # whole words only
    assert normalize_answer("A.B. the") == "ab"
    assert normalize_answer("«Zürich»") == "«zürich»"  # ASCII punctuation only, as the v1.1 script


def test_squad_em_and_f1_several_ground_truths():
    assert squad_exact_match("the Eiffel Tower", ["tower", "Eiffel Tower!"]) == 1.0
    assert squad_exact_match("Eiffel", ["tower", "Eiffel Tower!"]) == 0.0
    # pred tokens [big, red, barn]
    #   vs [red, barn, in, ohio]: common 2, P = 2/3, R = 2/4, F1 = (2/3)/(7/6) = 4/7
    #   vs [big, barn]:           common 2, P = 2/3, R = 1,   F1 = (4/3)/(5/3) = 4/5  <- max
    assert squad_f1("the big red barn", ["red barn in Ohio", "a big barn"]) == pytest.approx(4 / 5)
    assert squad_exact_match("the big red barn", ["red barn in Ohio", "a big barn"]) == 0.0
    # repeated tokens count once per match: [cat, cat] vs [cat]: P = 1/2, R = 1, F1 = 2/3
    assert squad_f1("the cat cat", ["cat"]) == pytest.approx(2 / 3)
    assert squad_f1("dog", ["cat"]) == 0.0 and squad_f1("", ["cat"]) == 0.0


def test_squad_scores_percent():
    examples = [QAExample("q1", "?", "c", (("France", 0),)),
                QAExample("q2", "?", "c", (("Paris", 0), ("the city of Paris", 0))),
                QAExample("q3", "?", "c", (("x", 0),)),
                QAExample("q4", "?", "c", ())]
    predictions = {"q1": "france.", "q2": "Paris city", "q4": "The", "other": "ignored"}
    # q1: EM 1, F1 1. q2: [paris, city] vs [paris]: P 1/2 R 1 -> 2/3; vs [city, of, paris]: P 1 R 2/3 -> 4/5;
    #   EM 0, F1 0.8. q3: no prediction -> 0, 0. q4: no answers, "The" normalises to "" -> 1, 1.
    # EM = (1 + 0 + 0 + 1) / 4 = 50 %, F1 = (1 + 0.8 + 0 + 1) / 4 = 70 %
    assert squad_scores(predictions, examples) == pytest.approx({"exact_match": 50.0, "f1": 70.0})
    assert squad_scores({}, []) == {"exact_match": 0.0, "f1": 0.0}


def test_attachment_scores_subtypes_and_punctuation():
    upos = [["PRON", "VERB", "DET", "NOUN", "PUNCT"], ["NOUN", "PUNCT"]]
    gold_heads = [[2, 0, 4, 2, 2], [0, 1]]
    gold_rels = [["nsubj", "root", "det:predet", "obj", "punct"], ["root", "punct"]]
    pred_heads = [[2, 0, 4, 2, 4], [0, 1]]
    pred_rels = [["nsubj:pass", "root", "det", "iobj", "punct"], ["root", "punct"]]
    # sentence 1: w1 head ok, nsubj:pass ~ nsubj ok; w2 ok ok; w3 head ok, det ~ det:predet ok;
    #             w4 head ok, iobj != obj; w5 (PUNCT) head 4 != 2.   sentence 2: both words right.
    # include: 7 words, UAS = (4 + 2)/7, LAS = (3 + 2)/7
    got = attachment_scores(pred_heads, pred_rels, gold_heads, gold_rels)
    assert got == pytest.approx({"uas": 6 / 7, "las": 5 / 7})
    # exclude: the 2 PUNCT words are not scored, 5 words: UAS = (4 + 1)/5 = 1, LAS = (3 + 1)/5
    got = attachment_scores(pred_heads, pred_rels, gold_heads, gold_rels, upos=upos, punct="exclude")
    assert got == pytest.approx({"uas": 1.0, "las": 4 / 5})
    assert attachment_scores([], [], [], []) == {"uas": 0.0, "las": 0.0}
    with pytest.raises(ValueError, match="needs the gold upos"):
        attachment_scores(pred_heads, pred_rels, gold_heads, gold_rels, punct="exclude")
    with pytest.raises(ValueError, match="expected 'include' or 'exclude'"):
        attachment_scores(pred_heads, pred_rels, gold_heads, gold_rels, punct="no")
    with pytest.raises(ValueError, match="sentence 1"):
        attachment_scores(pred_heads, pred_rels, [[2, 0, 4, 2, 2], [0]], gold_rels)
