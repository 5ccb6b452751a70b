"""Task data for the trainer: `read_task` (a file) and `load_hf_task` (a HF dataset) for any task kind,
and the label sets the heads are sized from.

Why: the trainer reads every kind the same way; which format reader and which HF row converter a kind
uses is its `Task`'s (tasks/registry.py). The readers and example records themselves live in
tasks/formats.py and are re-exported here, where callers have always found them.
"""

from __future__ import annotations

from xlplastic.errors import UserError
from xlplastic.paths import as_path
from xlplastic.tasks.formats import (ClassificationExample, ParsingExample, QAExample, TaggingExample, read_bio,
                                     read_classification, read_conllu, read_pos, read_squad)
from xlplastic.tasks.registry import get_task

__all__ = ["ClassificationExample", "ParsingExample", "QAExample", "TaggingExample", "check_labels", "example_labels",
           "label_map", "load_hf_task", "read_bio", "read_classification", "read_conllu", "read_pos", "read_squad",
           "read_task"]


def _class_names(feature) -> list[str] | None:
    """Names of a ClassLabel, or of the ClassLabel inside a Sequence/List feature."""
    inner = feature[0] if isinstance(feature, list) and feature else getattr(feature, "feature", feature)
    return getattr(inner, "names", None)


def load_hf_task(kind: str, name: str, *, subset: str | None = None, split: str = "train", data_files=None,
                 max_examples: int | None = None, language: str | None = None) -> list:
    """Task examples from a HF `datasets` dataset (hub name, or json/csv/parquet with data_files)."""
    from_row = get_task(kind).read_hf_row
    import datasets  # lazy: heavy, and only needed for this path

    try:
        ds = datasets.load_dataset(name, subset, split=split, data_files=data_files)
    except Exception as e:  # hub, network and format errors alike: one actionable line for the CLI
        first = (str(e).splitlines() or [""])[0][:300]
        raise UserError(f"{name}: cannot load HF dataset (subset={subset}, split={split}): {type(e).__name__}: "
                        f"{first}; expected a hub dataset name or json/csv/parquet with data_files") from e
    names = {k: _class_names(f) for k, f in ds.features.items()}
    out = []
    for i, row in enumerate(ds):
        if max_examples is not None and len(out) >= max_examples:
            break
        if language and row.get("language", language) != language:
            continue
        try:
            example = from_row(row, names)
        except (KeyError, StopIteration) as e:
            raise UserError(f"{name}: row {i} has no column {str(e) or 'for the text'} (columns: "
                            f"{', '.join(ds.column_names)}); expected the HF schema for {kind}") from None
        if example is not None:
            out.append(example)
    return out


def read_task(kind: str, path: str, *, language: str | None = None, max_examples: int | None = None) -> list:
    """Read `path` with the reader for `kind`; a missing file or one with no examples is a UserError."""
    task = get_task(kind)
    if not as_path(path).is_file():
        raise UserError(f"{path}: no such file; expected {task.file_format} for the {kind} task")
    examples = task.read_file(path, language=language, max_examples=max_examples)
    if not examples:
        lang = f" with language {language!r}" if task.reads_language and language else ""
        raise UserError(f"{path}: no examples found{lang}; expected {task.file_format} for the {kind} task")
    return examples


def example_labels(example) -> tuple[str, ...]:
    """The labels an example carries (class, tags, or deprels without subtypes); none for QA."""
    if isinstance(example, ClassificationExample):
        return (example.label,)
    if isinstance(example, TaggingExample):
        return example.tags
    if isinstance(example, ParsingExample):
        return tuple(r.split(":")[0] for r in example.deprels)  # subtypes stripped, as the metrics do
    return ()


def label_map(examples) -> dict[str, int]:
    """Sorted label set -> id: class labels, tags, or deprels without subtypes; {} for QA."""
    return {label: i for i, label in enumerate(sorted({lab for ex in examples for lab in example_labels(ex)}))}


def check_labels(known: dict[str, int], examples, source: str) -> None:
    """Fail when evaluation data has labels the model was never trained on (a mismatched label set)."""
    unknown = sorted({lab for ex in examples for lab in example_labels(ex)} - set(known))
    if unknown:
        names = lambda xs: ", ".join(xs[:8]) + (", ..." if len(xs) > 8 else "")  # noqa: E731
        raise UserError(f"{source}: labels {names(unknown)} do not occur in the training data (which has "
                        f"{len(known)} labels: {names(sorted(known))}); expected the same label set")
