"""Readers of downstream-task data formats: NLI/classification TSV/JSONL, CoNLL-U, BIO NER, SQuAD JSON, and
rows of Hugging Face datasets; and the example records they produce.

Files are read line by line (so large treebanks stream) and checked as they go: any bad input is a
one-line UserError naming `file:line` and what was expected, so it can be fixed without a traceback.
Which reader a task kind uses is its `Task`'s business (tasks/kinds/).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterator

from xlplastic.errors import UserError
from xlplastic.paths import as_path


@dataclass(frozen=True)
class ClassificationExample:
    """Sentence-pair (NLI) or single-sentence classification; text_pair is None for single sentences."""

    text: str
    text_pair: str | None
    label: str


@dataclass(frozen=True)
class TaggingExample:
    """POS or NER: one tag per word."""

    words: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass(frozen=True)
class ParsingExample:
    """A dependency tree; heads are 0 for the root, else the 1-based index of the head word."""

    words: tuple[str, ...]
    upos: tuple[str, ...]
    heads: tuple[int, ...]
    deprels: tuple[str, ...]


@dataclass(frozen=True)
class QAExample:
    """Extractive QA (SQuAD v1.1); answers are (text, answer_start char offset) and may be empty."""

    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    title: str = ""


def _lines(path) -> Iterator[tuple[int, str]]:
    """(line number, line without its ending), streamed; bytes that are not UTF-8 fail at their line."""
    try:
        f = as_path(path).open("rb")
    except OSError as e:
        raise UserError(f"{path}: cannot open ({e.strerror or e}); expected a readable UTF-8 text file") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{lineno}: byte {raw[e.start]:#04x} at column {e.start + 1} is not "
                                "valid UTF-8; expected UTF-8 text") from None
            yield lineno, (line.lstrip("\ufeff") if lineno == 1 else line).rstrip("\r\n")


# --- classification (NLI) -------------------------------------------------------------------------
_LABEL, _TEXT, _PAIR = ("gold_label", "label"), ("premise", "sentence1", "text"), ("hypothesis", "sentence2")
_COLUMNS = "`label` (or `gold_label`) and `premise`/`hypothesis` (or `sentence1`/`sentence2`, or `text`)"


def _pick(names, options) -> str | None:
    return next((o for o in options if o in names), None)


def _tsv_rows(path) -> Iterator[tuple[int, dict]]:
    """Rows of a TSV with a header; no quoting, since XNLI text contains literal quote characters."""
    header = None
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if header is None:
            header = fields
            if not (_pick(header, _LABEL) and _pick(header, _TEXT)):
                raise UserError(f"{path}:{lineno}: header has columns {', '.join(header)[:200]}; expected {_COLUMNS}")
        elif len(fields) != len(header):
            raise UserError(f"{path}:{lineno}: line has {len(fields)} tab-separated fields; "
                            f"expected {len(header)} as in the header")
        else:
            yield lineno, dict(zip(header, fields))


def _jsonl_rows(path) -> Iterator[tuple[int, dict]]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno}); "
                            "expected one JSON object per line (JSONL)") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: JSON line is a {type(row).__name__}; expected an object")
        yield lineno, row


def read_classification(path, *, language: str | None = None,
                        max_examples: int | None = None) -> list[ClassificationExample]:
    """NLI or single-sentence examples from a headed TSV or MultiNLI/XNLI JSONL; gold label '-' is skipped.

    `language` keeps rows whose `language` column equals it (files without that column are kept whole).
    """
    jsonl = Path(path).suffix.lower() in (".jsonl", ".json")
    out: list[ClassificationExample] = []
    for lineno, row in (_jsonl_rows if jsonl else _tsv_rows)(path):
        if max_examples is not None and len(out) >= max_examples:
            break
        label_key, text_key, pair_key = _pick(row, _LABEL), _pick(row, _TEXT), _pick(row, _PAIR)
        if not (label_key and text_key):
            raise UserError(f"{path}:{lineno}: object has keys {', '.join(row)[:200]}; expected {_COLUMNS}")
        if language and row.get("language", language) != language:
            continue
        label = str(row[label_key]).strip()
        if label == "-":  # MultiNLI/XNLI: annotators did not agree on a gold label
            continue
        if not label:
            raise UserError(f"{path}:{lineno}: empty label; expected a class name such as `entailment`")
        pair = str(row[pair_key]) if pair_key and text_key != "text" else None
        out.append(ClassificationExample(str(row[text_key]), pair, label))
    return out


# --- CoNLL-U (POS, parsing) -----------------------------------------------------------------------
_SKIPPED_ID = re.compile(r"\d+-\d+|\d+\.\d+")  # multiword-token ranges and empty nodes


def _tree(path, rows: list[tuple[int, list[str]]]) -> ParsingExample:
    n, heads = len(rows), []
    for i, (lineno, cols) in enumerate(rows, 1):
        head = cols[6]
        if head == "_":  # POS-only files carry no tree
            heads.append(0)
        elif not head.isdigit() or int(head) > n or int(head) == i:
            raise UserError(f"{path}:{lineno}: HEAD {head!r} of word {i} is not valid; expected an integer "
                            f"in 0..{n} (0 = root; the sentence has {n} words) other than {i}, or _")
        else:
            heads.append(int(head))
    col = lambda k: tuple(cols[k] for _, cols in rows)  # noqa: E731
    return ParsingExample(col(1), col(3), tuple(heads), col(7))


def read_conllu(path, *, max_sentences: int | None = None) -> list[ParsingExample]:
    """Basic dependency trees from CoNLL-U; comments, multiword ranges and empty nodes are skipped."""
    out: list[ParsingExample] = []
    rows: list[tuple[int, list[str]]] = []
    for lineno, line in chain(_lines(path), [(0, "")]):  # the sentinel flushes a last unterminated sentence
        if not line.strip():
            if rows:
                out.append(_tree(path, rows))
                rows = []
                if max_sentences is not None and len(out) >= max_sentences:
                    break
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise UserError(f"{path}:{lineno}: CoNLL-U line has {len(cols)} columns; "
                            "expected 10 tab-separated columns")
        if _SKIPPED_ID.fullmatch(cols[0]):
            continue
        if not cols[0].isdigit():
            raise UserError(f"{path}:{lineno}: ID {cols[0]!r} is not an integer; expected a word index, "
                            "a range like 3-4 or an empty node like 5.1")
        if int(cols[0]) != len(rows) + 1:
            raise UserError(f"{path}:{lineno}: word ID {cols[0]} is out of order; expected {len(rows) + 1}")
        rows.append((lineno, cols))
    return out


def read_pos(path, **kw) -> list[TaggingExample]:
    """Words and UPOS tags from CoNLL-U (keywords as read_conllu)."""
    return [TaggingExample(t.words, t.upos) for t in read_conllu(path, **kw)]


# --- BIO NER --------------------------------------------------------------------------------------
_BIO = re.compile(r"O|[BI]-\S+")
_LANG_PREFIX = re.compile(r"[a-z]{2,3}:(?=.)")  # `en:Paris` in some WikiAnn dumps


def read_bio(path, *, max_sentences: int | None = None) -> list[TaggingExample]:
    """NER sentences from WikiAnn `idx<TAB>token<TAB>tag` or CoNLL-2003 `token ... tag` lines.

    The layout is fixed by the first token line, and a language prefix is stripped only when every
    token of the first sentence has it, so a numeric token or a word like `re:Invent` stays intact.
    """
    out: list[TaggingExample] = []
    words: list[str] = []
    tags: list[str] = []
    indexed = prefix = None
    for lineno, line in chain(_lines(path), [(0, "")]):
        if not line.strip():
            if words:
                if prefix is None:
                    found = {m.group(0) if (m := _LANG_PREFIX.match(w)) else "" for w in words}
                    prefix = found.pop() if len(found) == 1 else ""
                words = [w[len(prefix):] if prefix and w.startswith(prefix) else w for w in words]
                out.append(TaggingExample(tuple(words), tuple(tags)))
                words, tags = [], []
                if max_sentences is not None and len(out) >= max_sentences:
                    break
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if fields[0] == "-DOCSTART-":
            continue
        if indexed is None:
            indexed = "\t" in line and len(fields) == 3 and fields[0].isdigit()
        if len(fields) < 2 or (indexed and len(fields) != 3):
            raise UserError(f"{path}:{lineno}: line has {len(fields)} field(s); expected "
                            + ("`idx<TAB>token<TAB>tag` as in the first line" if indexed else "`token ... tag`"))
        if not _BIO.fullmatch(fields[-1]):
            raise UserError(f"{path}:{lineno}: tag {fields[-1]!r} is not IOB2; expected O, B-TYPE or I-TYPE")
        words.append(fields[1 if indexed else 0])
        tags.append(fields[-1])
    return out


# --- SQuAD ----------------------------------------------------------------------------------------
_SQUAD = 'SQuAD v1.1 JSON {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}'


def _get(obj, key: str, kind: type, path, where: str):
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise UserError(f"{path}: {where} has no {kind.__name__} {key!r}; expected {_SQUAD}")
    return value


def read_squad(path, *, max_examples: int | None = None) -> list[QAExample]:
    """SQuAD v1.1 / XQuAD / MLQA questions; every answer must sit at its answer_start in the context."""
    try:
        doc = json.loads("\n".join(line for _, line in _lines(path)))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}); expected {_SQUAD}") from None
    out: list[QAExample] = []
    for a, article in enumerate(_get(doc, "data", list, path, "the top-level JSON value")):
        title = str(article.get("title", "")) if isinstance(article, dict) else ""
        for p, para in enumerate(_get(article, "paragraphs", list, path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _get(para, "context", str, path, where)
            for q, qa in enumerate(_get(para, "qas", list, path, where)):
                qid = str(qa.get("id", f"{where}.qas[{q}]")) if isinstance(qa, dict) else f"{where}.qas[{q}]"
                question = _get(qa, "question", str, path, f"question {qid!r}")
                answers = []
                for ans in _get(qa, "answers", list, path, f"question {qid!r}"):
                    text = _get(ans, "text", str, path, f"an answer of question {qid!r}")
                    start = _get(ans, "answer_start", int, path, f"an answer of question {qid!r}")
                    found = context[start:start + len(text)]
                    if found != text:
                        raise UserError(f"{path}: question {qid!r}: answer {text!r} is not at answer_start {start} "
                                        f"(the context has {found!r} there); expected context[answer_start:"
                                        "answer_start + len(text)] == text")
                    answers.append((text, start))
                out.append(QAExample(qid, question, context, tuple(answers), title))
                if max_examples is not None and len(out) >= max_examples:
                    return out
    return out


# --- Hugging Face datasets ------------------------------------------------------------------------
def _named(values, names):
    """ClassLabel ids -> names (values that are not ids, or have no names, become strings)."""
    name = lambda v: names[v] if names and isinstance(v, int) and v >= 0 else str(v)  # noqa: E731
    return tuple(name(v) for v in values) if isinstance(values, (list, tuple)) else name(values)


def tree_from_hf(row, names) -> ParsingExample:
    """HF universal_dependencies rows keep multiword tokens (upos `_`) and empty nodes (head None): drop them."""
    upos = _named(row["upos"], names["upos"])
    heads = [str(h) for h in row["head"]] if "head" in row else ["_"] * len(upos)  # POS-only sets have no tree
    tree = any(h.isdigit() for h in heads)
    keep = [i for i, (u, h) in enumerate(zip(upos, heads)) if u != "_" and (h.isdigit() or not tree)]
    rels = _named(row["deprel"], names["deprel"]) if "deprel" in row else ("_",) * len(heads)
    pick = lambda seq, f=str: tuple(f(seq[i]) for i in keep)  # noqa: E731
    return ParsingExample(pick(row["tokens"]), pick(upos), pick(heads, lambda h: int(h) if h.isdigit() else 0),
                          pick(rels))


def pos_from_hf(row, names) -> TaggingExample:
    """Words and UPOS of an HF universal_dependencies row."""
    tree = tree_from_hf(row, names)
    return TaggingExample(tree.words, tree.upos)


def ner_from_hf(row, names) -> TaggingExample:
    """WikiAnn / CoNLL-2003 style rows: `tokens` and `ner_tags` (ClassLabel ints or names)."""
    return TaggingExample(tuple(row["tokens"]), _named(row["ner_tags"], names["ner_tags"]))


def classification_from_hf(row, names) -> ClassificationExample | None:
    """NLI or single-sentence rows; None (skipped) when the row has no gold label."""
    label = row["label"] if "label" in row else row["gold_label"]
    if label in (-1, "-", None):  # no gold label
        return None
    text = next(row[k] for k in ("premise", "sentence1", "text", "sentence") if k in row)
    pair = next((row[k] for k in _PAIR if k in row), None)
    return ClassificationExample(text, pair, _named(label, names.get("label") or names.get("gold_label")))


def qa_from_hf(row, names) -> QAExample:
    """SQuAD-schema rows (`answers` = {"text": [...], "answer_start": [...]})."""
    ans = row["answers"]
    return QAExample(str(row["id"]), row["question"], row["context"],
                     tuple(zip(ans["text"], (int(s) for s in ans["answer_start"]))), row.get("title") or "")
