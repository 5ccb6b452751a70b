"""Text sources: turn one `CorpusConfig` into a stream of documents (stripped, non-empty strings).

Why: every reader (plain text, JSONL, Hugging Face, TFDS, synthetic) ends in the same shape, so
tokenization and packing never care where text came from; bad input stops here with one line that
names the file and line.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from xlplastic.config import CorpusConfig
from xlplastic.errors import UserError
from xlplastic.paths import as_path, is_url

TEXT_FILES = "a text file (one document per line), a folder of *.txt files or a glob (text/*.txt)"
JSONL_FILES = "a JSONL file, a folder of *.jsonl files or a glob (data/*.jsonl)"
_HF_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def resolve_path(path: str, data_dir: str | None) -> Path:
    """Relative corpus paths are taken relative to `data_dir` when one is given; either may be a `gs://` URL."""
    if is_url(path):
        return as_path(path)
    p = Path(path).expanduser()
    if not data_dir or p.is_absolute():
        return p
    return (as_path(data_dir) if is_url(data_dir) else Path(data_dir).expanduser()) / p


def _describe(corpus: CorpusConfig) -> str:
    source = corpus.path or corpus.name or ("generated" if corpus.kind == "synthetic" else "no path or name")
    return f"corpus `{corpus.language}` ({corpus.kind}: {source})"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) for non-empty lines; non-UTF-8 bytes name the file and line."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{n}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); expected UTF-8 text") from None
            if line:
                yield n, line


def corpus_files(path: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """A file, the files of a folder with one of `suffixes`, or the files a glob matches (`text/*.txt`),
    in sorted order."""
    text = str(path)
    if any(c in text for c in "*?["):
        cut = min(text.find(c) for c in "*?[" if c in text)
        head, _, stem = text[:cut].rpartition("/")
        pattern = stem + text[cut:]  # relative to the folder before the first wildcard
        root = as_path(head) if is_url(head) else Path(head or ".")
        files = sorted((p for p in root.glob(pattern) if p.is_file()), key=str)
        if not files:
            raise UserError(f"{path}: matches no file; expected {what}")
        return files
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in suffixes)
        if not files:
            raise UserError(f"{path}: folder has no {'/'.join('*' + s for s in suffixes)} files; expected {what}")
        return files
    raise UserError(f"{path}: no such file or folder; expected {what}")


def _text(path: Path) -> Iterator[str]:
    for f in corpus_files(path, (".txt",), TEXT_FILES):
        for _, line in _lines(f):
            yield line


def json_text(line: str, field: str, where) -> str:
    """The stripped string `field` of one JSONL line; `where()` names the place in the one-line errors."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where()}: not valid JSON ({e.msg}); expected one JSON object per line") from None
    if not isinstance(obj, dict) or field not in obj:
        raise UserError(f"{where()}: no field `{field}`; expected a JSON object with a `{field}` string")
    text = obj[field]
    if not isinstance(text, str):
        raise UserError(f"{where()}: field `{field}` is a {type(text).__name__}; expected a string")
    return text.strip()


def _jsonl(path: Path, field: str) -> Iterator[str]:
    for f in corpus_files(path, (".jsonl", ".json"), JSONL_FILES):
        for n, line in _lines(f):
            if text := json_text(line, field, lambda f=f, n=n: f"{f}:{n}"):
                yield text


def _field(rows: Iterable[dict], field: str, where: str) -> Iterator[str]:
    for row in rows:
        if field not in row:
            raise UserError(f"{where}: no field `{field}` (has {sorted(row)}); set the corpus `field`")
        text = row[field]
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if isinstance(text, str) and text.strip():
            yield text.strip()


def _hf(corpus: CorpusConfig, data_dir: str | None) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise UserError(f"{_describe(corpus)}: kind `hf` needs the `datasets` library; run pip install 'xlplastic[hf]'") from None

    if corpus.path:
        path = resolve_path(corpus.path, data_dir)
        files = corpus_files(path, tuple(_HF_BUILDERS), "local data files for `datasets`")
        builders = {_HF_BUILDERS.get(f.suffix) for f in files}
        if None in builders or len(builders) != 1:
            raise UserError(f"{path}: cannot infer one `datasets` builder from {sorted({f.suffix for f in files})}; expected one of {sorted(_HF_BUILDERS)}")
        args, kwargs, where = (builders.pop(),), dict(data_files=[str(f) for f in files]), str(path)
    elif corpus.name:
        args, kwargs, where = (corpus.name, corpus.subset), {}, f"HF dataset {corpus.name}"
    else:
        raise UserError(f"{_describe(corpus)}: kind `hf` needs `path` (local files) or `name` (hub dataset)")
    try:
        ds = datasets.load_dataset(*args, split=corpus.split, streaming=corpus.streaming, **kwargs)
    except Exception as e:  # datasets raises many types (network, missing split, bad files): report one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{where}: `datasets.load_dataset` failed ({type(e).__name__}: {first})") from None
    yield from _field(ds, corpus.field, where)


def _tfds(corpus: CorpusConfig, data_dir: str | None) -> Iterator[str]:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(f"{_describe(corpus)}: kind `tfds` needs tensorflow-datasets; run pip install 'xlplastic[tfds]'") from None
    if not corpus.name:
        raise UserError(f"{_describe(corpus)}: kind `tfds` needs `name` (a TFDS dataset name)")
    tfds_dir = str(resolve_path(corpus.path, data_dir)) if corpus.path else None
    try:
        ds = tfds.load(corpus.name, split=corpus.split, data_dir=tfds_dir)
    except Exception as e:  # TFDS raises many types (missing data, bad split): report one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"TFDS dataset {corpus.name}: `tfds.load` failed ({type(e).__name__}: {first})") from None
    yield from _field(tfds.as_numpy(ds), corpus.field, f"TFDS dataset {corpus.name}")


def _raw(corpus: CorpusConfig, data_dir: str | None) -> Iterator[str]:
    if corpus.kind == "synthetic":
        from xlplastic.data.synthetic import generate_corpus

        return iter(generate_corpus(corpus.synthetic_sentences, corpus.synthetic_words, corpus.synthetic_seed))
    if corpus.kind == "hf":
        return _hf(corpus, data_dir)
    if corpus.kind == "tfds":
        return _tfds(corpus, data_dir)
    if not corpus.path:
        raise UserError(f"{_describe(corpus)}: kind `{corpus.kind}` needs `path`")
    path = resolve_path(corpus.path, data_dir)
    return _text(path) if corpus.kind == "text" else _jsonl(path, corpus.field)


def iter_texts(corpus: CorpusConfig, data_dir: str | None = None) -> Iterator[str]:
    """Documents of `corpus` (stripped, non-empty), at most `max_lines`; an empty corpus is an error."""
    texts = _raw(corpus, data_dir)
    if corpus.max_lines is not None:
        texts = itertools.islice(texts, corpus.max_lines)
    empty = True
    for text in texts:
        empty = False
        yield text
    if empty:
        raise UserError(f"{_describe(corpus)}: no non-empty text; expected at least one document")
