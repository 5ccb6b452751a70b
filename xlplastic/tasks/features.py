"""Downstream-task features: examples -> fixed-length device arrays (+ host-side meta), and back to scores.

Why: `encode` does the tokenisation and subword/word alignment, `score` maps predictions back onto the
examples and calls the metrics, so the numbers are always computed against the original gold data. Both
serve every kind alike by looking it up in the task registry; each kind's module in tasks/kinds/
documents its arrays, and tasks/encoding.py the layout they share.
"""

from __future__ import annotations

from xlplastic.tasks.encoding import Features, strip_subtype
from xlplastic.tasks.registry import TASKS, get_task

__all__ = ["HEADLINE_METRIC", "KINDS", "Features", "encode", "num_labels", "score", "strip_subtype"]

KINDS = tuple(TASKS)
# the score a report leads with, per kind (what the papers report: XNLI accuracy, NER F1, LAS, SQuAD F1)
HEADLINE_METRIC = {kind: task.headline_metric for kind, task in TASKS.items()}


def num_labels(kind: str, label_map: dict[str, int]) -> int:
    """Output size of the head: 2 for QA (start/end), else the number of labels."""
    return get_task(kind).num_labels(label_map)


def encode(kind, examples, tokenizer, specials, seq_len, label_map, *, doc_stride=128, max_query_len=64) -> Features:
    """Tokenises `examples` of task `kind` into `Features` (see the kind's module for the arrays)."""
    return get_task(kind).encode(list(examples), tokenizer, specials, seq_len, label_map,
                                 doc_stride=doc_stride, max_query_len=max_query_len)


def score(kind, predictions, features: Features, examples, label_map, *, max_answer_len=30, n_best=20,
          punct: str = "include") -> dict[str, float]:
    """Task metrics from `predictions` (numpy, concatenated over all N features, padding rows dropped).

    classification/pos: accuracy; ner: span F1/precision/recall + token accuracy; parsing: UAS/LAS of
    the best well-formed tree, punctuation included (CoNLL 2018), subtypes stripped; qa: SQuAD exact
    match / F1 (percent). Words truncated away by `encode` count as wrong (NER: predicted "O", so their
    entities are missed).
    """
    return get_task(kind).score(predictions, features, list(examples), label_map,
                                max_answer_len=max_answer_len, n_best=n_best, punct=punct)
