"""What a downstream task is: the `Task` record each kind module in tasks/kinds/ fills in.

Why: one record per kind keeps everything that differs between tasks (how to read the data, which
arrays to encode, which head, its loss, its predictions, its score) side by side, so the front-end
functions in formats.py, features.py and heads.py are plain look-ups and a new task is one new module.
Options a kind does not use (QA's `doc_stride` for a tagger, parsing's `punct` for NLI) arrive as keywords
all the same and are ignored (`**_`), so callers pass one set whatever the kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from xlplastic.tasks.encoding import Features


@dataclass(frozen=True)
class Task:
    kind: str  # the name in config `task.kind`
    headline_metric: str  # the score a report leads with (what the papers report)
    file_format: str  # what `read_file` expects, for error messages ("a CoNLL-U file")
    read_file: Callable[..., list]  # (path, *, language, max_examples) -> examples
    read_hf_row: Callable[[dict, dict], Any]  # (HF row, class names per column) -> example, or None to skip it
    encode: Callable[..., Features]  # (examples, tokenizer, specials, seq_len, label_map, **options)
    new_head: Callable[..., Any]  # (model_cfg, num_labels, nnx.Rngs, pooling) -> head module
    loss: Callable[..., tuple]  # (head, h_BxTxD, batch, dropout_key) -> (summed loss, items, correct items)
    predict: Callable[..., dict]  # (head, h_BxTxD, batch) -> device arrays, batched along axis 0
    score: Callable[..., dict[str, float]]  # (predictions, features, examples, label_map, **options)
    num_labels: Callable[[dict], int] = len  # the head's output size, from the label map
    reads_language: bool = False  # read_file keeps only `language`'s rows (multi-language files such as XNLI)
