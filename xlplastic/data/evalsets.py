"""Readers for alignment evaluation sets: MUSE bilingual dictionaries, Tatoeba pairs, line-aligned parallel text.

Why: the alignment kernels (`xlplastic.analysis.align`) score word translation on MUSE dictionaries and
sentence retrieval on Tatoeba (XTREME) or any line-aligned parallel corpus; bad input stops here with one
line naming the file (and line) and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from xlplastic.errors import UserError
from xlplastic.paths import as_path

__all__ = ["read_muse_dictionary", "read_parallel", "read_tatoeba", "read_parallel_tsv"]


def _open_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, text without the line break) for every line; missing files and non-UTF-8 bytes name the file."""
    if not path.is_file():
        raise UserError(f"{path}: no such file; expected {what}")
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{n}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); expected UTF-8 text") from None
            if n == 1:
                line = line.removeprefix("\ufeff")
            yield n, line.rstrip("\r\n")


def read_muse_dictionary(path) -> list[tuple[str, str]]:
    """(source word, target word) pairs of a MUSE dictionary: `src tgt` per line, space or tab separated.

    A word may appear in several pairs (several gold translations).  Blank lines are skipped.
    """
    path = as_path(path)
    what = "a MUSE dictionary (one `source target` word pair per line)"
    pairs = []
    for n, line in _open_lines(path, what):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise UserError(f"{path}:{n}: {len(fields)} fields ({line.strip()[:60]!r}); expected 2: `source target`")
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise UserError(f"{path}: no word pairs; expected {what}")
    return pairs


def _read_lines(path: Path, what: str) -> list[str]:
    return [line.strip() for _, line in _open_lines(path, what)]


def read_parallel(path_a, path_b) -> tuple[list[str], list[str]]:
    """(lines of a, lines of b) for two line-aligned files: line i of one translates line i of the other."""
    path_a, path_b = as_path(path_a), as_path(path_b)
    what = "line-aligned parallel text (one sentence per line, UTF-8)"
    a, b = _read_lines(path_a, what), _read_lines(path_b, what)
    if len(a) != len(b):
        raise UserError(
            f"{path_a} has {len(a)} lines but {path_b} has {len(b)}; expected line-aligned files with the same number of lines"
        )
    if not a:
        raise UserError(f"{path_a} and {path_b} are empty; expected {what}")
    return a, b


def read_tatoeba(folder, lang: str) -> tuple[list[str], list[str]]:
    """(lang sentences, English sentences) of the LASER/XTREME Tatoeba pair `tatoeba.{lang}-eng.{lang|eng}`."""
    folder = as_path(folder)
    a, b = folder / f"tatoeba.{lang}-eng.{lang}", folder / f"tatoeba.{lang}-eng.eng"
    missing = [p.name for p in (a, b) if not p.is_file()]
    if missing:
        have = sorted({p.name.split(".")[1].split("-")[0] for p in folder.glob("tatoeba.*-eng.*")}) if folder.is_dir() else []
        where = f"languages present: {', '.join(have)}" if have else ("no tatoeba.*-eng.* files there" if folder.is_dir() else "no such folder")
        raise UserError(
            f"{folder}: missing {' and '.join(missing)} for Tatoeba `{lang}`; expected {a.name} and {b.name} ({where})"
        )
    return read_parallel(a, b)


def read_parallel_tsv(path, columns: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Column name -> lines of a tab-separated parallel file with a header row (e.g. `sent_id en fr de ru zh`).

    `columns` picks (and orders) the columns returned; default all of them.
    """
    path = as_path(path)
    what = "a tab-separated file with a header row of column names and one aligned row per line"
    lines = _open_lines(path, what)
    header = next(lines, None)
    if header is None or not header[1].strip():
        raise UserError(f"{path}: no header row; expected {what}")
    names = header[1].split("\t")
    dups = sorted({c for c in names if names.count(c) > 1})
    if dups or any(not c.strip() for c in names):
        raise UserError(f"{path}:1: header {names!r} has empty or repeated column names; expected distinct names")
    wanted = list(names) if columns is None else list(columns)
    if not wanted:
        raise UserError(f"{path}: no columns asked for; expected some of: {', '.join(names)}")
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise UserError(f"{path}: no column {', '.join(map(repr, unknown))}; expected one of: {', '.join(names)}")
    pos = [names.index(c) for c in wanted]
    out: dict[str, list[str]] = {c: [] for c in wanted}
    rows = 0
    for n, line in lines:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(names):
            raise UserError(f"{path}:{n}: {len(fields)} tab-separated fields; expected {len(names)} ({' '.join(names)})")
        for c, i in zip(wanted, pos):
            out[c].append(fields[i].strip())
        rows += 1
    if not rows:
        raise UserError(f"{path}: no rows after the header; expected {what}")
    return out
