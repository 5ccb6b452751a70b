"""A corpus as an ordered list of segments, each readable on its own: the unit of parallel packing.

Why: rows must not depend on how many processes pack them, so the units of work are fixed by the data.
Text and JSONL files are cut at fixed byte offsets (a line belongs to the segment its first byte is
in), so a worker seeks straight to its range of a multi-GB file, locally or on gs:// (xlplastic.paths);
other sources (HF datasets, TFDS, synthetic) are cut every `segment_docs` documents of their stream.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from xlplastic.config import CorpusConfig
from xlplastic.data import sources
from xlplastic.errors import UserError
from xlplastic.paths import as_path
from xlplastic.paths import size as size_of

_FILES = {"text": ((".txt",), sources.TEXT_FILES), "jsonl": ((".jsonl", ".json"), sources.JSONL_FILES)}


def describe(corpus: CorpusConfig) -> str:
    source = corpus.path or corpus.name or ("generated" if corpus.kind == "synthetic" else "no path or name")
    return f"corpus `{corpus.language}` ({corpus.kind}: {source})"


def corpus_files(corpus: CorpusConfig, data_dir: str | None) -> list:
    """The files of a text/JSONL corpus in order: one file, a folder's files, or a glob's matches."""
    suffixes, what = _FILES[corpus.kind]
    return sources.corpus_files(sources.resolve_path(corpus.path, data_dir), suffixes, what)


@dataclass(frozen=True)
class Segment:
    index: int  # position in the corpus's segment order
    file: str | None = None  # byte-range segments: the file and its [start, end)
    start: int = 0
    end: int = 0

    def where(self) -> str:
        return f"{self.file} bytes {self.start}..{self.end}" if self.file else f"documents segment {self.index}"


def file_segments(corpus: CorpusConfig, data_dir: str | None, segment_bytes: int) -> list[Segment] | None:
    """Byte-range segments of a text/JSONL corpus (files in order); None for stream sources, whose
    segments (every `segment_docs` documents) are only known by reading."""
    if corpus.kind not in _FILES:
        return None
    out: list[Segment] = []
    for f in corpus_files(corpus, data_dir):
        size = size_of(f)
        for start in range(0, size, segment_bytes):
            out.append(Segment(len(out), str(f), start, min(start + segment_bytes, size)))
    return out


def _line_number(path: str, offset: int) -> int:
    """1-based number of the line starting at byte `offset` (only computed for an error message)."""
    n, left = 1, offset
    with as_path(path).open("rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 24))
            if not chunk:
                break
            n += chunk.count(b"\n")
            left -= len(chunk)
    return n


def _range_lines(seg: Segment) -> Iterator[tuple[int, str]]:
    """(byte offset, stripped text) of the non-empty lines that start in [seg.start, seg.end)."""
    with as_path(seg.file).open("rb") as f:
        pos = seg.start
        if pos > 0:  # the line running into this range belongs to the previous segment
            f.seek(pos - 1)
            pos += len(f.readline()) - 1
        for raw in f:
            if pos >= seg.end:
                break
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                n = _line_number(seg.file, pos)
                raise UserError(f"{seg.file}:{n}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                                "expected UTF-8 text") from None
            if line:
                yield pos, line
            pos += len(raw)


class SegmentReader:
    """Texts of a corpus's segments. Byte-range segments are read directly; stream segments through
    one cursor over the source that only moves forward (a process reads its segments in order)."""

    def __init__(self, corpus: CorpusConfig, data_dir: str | None, segment_docs: int):
        self.corpus, self.data_dir, self.segment_docs = corpus, data_dir, segment_docs
        self._stream: Iterator[str] | None = None
        self._at = 0

    def texts(self, seg: Segment) -> Iterator[str]:
        if seg.file is not None:
            return self._file_texts(seg)
        return self._stream_texts(seg.index)

    def _file_texts(self, seg: Segment) -> Iterator[str]:
        if self.corpus.kind == "text":
            return (line for _, line in _range_lines(seg))
        field = self.corpus.field
        texts = (sources.json_text(line, field, lambda pos=pos: f"{seg.file}:{_line_number(seg.file, pos)}")
                 for pos, line in _range_lines(seg))
        return (t for t in texts if t)

    def _stream_texts(self, index: int) -> Iterator[str]:
        first = index * self.segment_docs
        if self._stream is None or self._at > first:
            whole = self.corpus.model_copy(update={"max_lines": None})  # the corpus-wide plan applies max_lines
            self._stream, self._at = sources.iter_texts(whole, self.data_dir), 0  # an empty source is one line there
        if self._at < first:
            skipped = sum(1 for _ in itertools.islice(self._stream, first - self._at))
            self._at += skipped
            if self._at < first:
                return iter(())
        taken = list(itertools.islice(self._stream, self.segment_docs))
        self._at += len(taken)
        return iter(taken)

