"""The packed-row cache on disk: one folder per corpus, rows in .npy shard files plus an index.json.

Why this layout: a row is fixed-length int32, so row r of a shard is at a computed byte offset; a
host reads only the rows of its batch slice, through a memory map locally or by range reads on
gs:// (xlplastic.paths: etils.epath). Plain .npy over Grain + ArrayRecord: ArrayRecord keeps a per-record index and
(optionally) compresses records, which buys nothing for fixed-length rows and adds a reader and a
dependency; .npy shards open with NumPy alone and are what every other tool reads (docs/benchmarks.md).

Shards hold one segment each (segments are fixed by the data: docs of `data.segment_bytes` of input),
so their row counts vary a little; the index's cumulative counts map a global row id to a shard. The
index is written last: its presence means every shard it lists is complete. It records the tokenizer's
hash, the packing settings and the counts, and every shard's rows and checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np

from xlplastic.errors import UserError
from xlplastic.paths import AnyPath, is_url
from xlplastic.paths import size as size_of

FORMAT = "xlplastic-row-cache"
VERSION = 4  # bump when the packing or the layout changes
INDEX = "index.json"
HEADER_BYTES = 128  # every shard's .npy header is padded to this, so row r starts at 128 + r * row bytes


@dataclass(frozen=True)
class PackedLanguage:
    language: str
    train: Any  # int32 [N_train, seq_len] rows: `ShardedRows` (or an array in tests)
    eval: Any  # int32 [N_eval, seq_len]
    num_tokens: int  # content tokens used (without bos/eos/pad)


def is_remote(path) -> bool:
    return is_url(path)


def npy_header(rows: int, seq_len: int) -> bytes:
    """A .npy (version 1.0) header for int32 [rows, seq_len], padded to HEADER_BYTES."""
    d = "{'descr': '<i4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, seq_len)
    body = HEADER_BYTES - 10
    if len(d) + 1 > body:
        raise ValueError(f"shape ({rows}, {seq_len}) does not fit a {HEADER_BYTES}-byte header")
    return b"\x93NUMPY\x01\x00" + body.to_bytes(2, "little") + (d.ljust(body - 1) + "\n").encode("latin1")


class ShardWriter:
    """Streams rows into one shard: a local temporary file (header placeholder, rows, then the real
    header), renamed into place or copied to gs:// when complete. Returns the shard's index entry."""

    def __init__(self, path: AnyPath, seq_len: int, tmp_dir: str | None = None):
        self.path, self.seq_len = path, seq_len
        local_dir = str(path.parent) if not is_remote(path) else (tmp_dir or "/tmp")
        self.tmp = os.path.join(local_dir, f".{path.name}.tmp{os.getpid()}")
        self.f = open(self.tmp, "wb")
        self.f.write(npy_header(0, seq_len))
        self.hash = hashlib.sha256()
        self.rows = 0

    def write(self, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype="<i4").tobytes()
        self.f.write(data)
        self.hash.update(data)
        self.rows += len(rows)

    def close(self) -> dict:
        self.f.seek(0)
        self.f.write(npy_header(self.rows, self.seq_len))
        self.f.close()
        if is_remote(self.path):
            with open(self.tmp, "rb") as src, self.path.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
            os.unlink(self.tmp)
        else:
            os.replace(self.tmp, self.path)
        return {"file": self.path.name, "rows": self.rows, "sha256": self.hash.hexdigest()}

    def abort(self) -> None:
        self.f.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def write_array(path: AnyPath, rows: np.ndarray) -> dict:
    w = ShardWriter(path, rows.shape[1])
    w.write(rows)
    return w.close()


class ShardedRows:
    """Rows [N, seq_len] spread over shard files, indexed by global row id (ints, slices or int
    arrays); only the rows asked for are read."""

    ndim = 2
    dtype = np.dtype(np.int32)

    def __init__(self, folder: AnyPath, shards: list[dict], seq_len: int):
        self.folder, self.shards, self.seq_len = folder, shards, seq_len
        self.starts = np.concatenate([[0], np.cumsum([s["rows"] for s in shards], dtype=np.int64)])
        self.shape = (int(self.starts[-1]), seq_len)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        if isinstance(key, tuple):  # rows first, then columns of those rows
            rows = self[key[0]]
            return rows[key[1:]] if isinstance(key[0], (int, np.integer)) else rows[(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        if isinstance(key, slice):
            return self[np.arange(*key.indices(len(self)))]
        idx = np.asarray(key, dtype=np.int64)
        if idx.ndim != 1:
            raise IndexError("ShardedRows takes an int, a slice or a 1-d array of row ids")
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row id out of range [0, {len(self)})")
        out = np.empty((len(idx), self.seq_len), np.int32)
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            out[sel] = self._read(int(s), idx[sel] - self.starts[s])
        return out

    def _read(self, s: int, local: np.ndarray) -> np.ndarray:
        path = self.folder / self.shards[s]["file"]
        if not is_remote(path):
            if s not in self._maps:
                self._maps[s] = np.load(str(path), mmap_mode="r")
            return self._maps[s][local]
        return _range_read(path, local, self.seq_len)


def _range_read(path: AnyPath, local: np.ndarray, seq_len: int) -> np.ndarray:
    """Rows of a remote shard, one read per run of consecutive row ids."""
    row = seq_len * 4
    out = np.empty((len(local), seq_len), np.int32)
    order = np.argsort(local, kind="stable")
    ids = local[order]
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    with path.open("rb") as f:
        for run in np.split(np.arange(len(ids)), breaks):
            if not len(run):
                continue
            f.seek(HEADER_BYTES + int(ids[run[0]]) * row)
            buf = f.read(len(run) * row)
            out[order[run]] = np.frombuffer(buf, "<i4").reshape(len(run), seq_len)
    return out


# ----------------------------------------------------------------------------------------------
# The index


def read_index(folder: AnyPath) -> dict | None:
    """The folder's index, or None when the cache is not complete (no index yet)."""
    p = folder / INDEX
    if not p.exists():
        return None
    try:
        index = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not a valid cache index ({type(e).__name__}); expected the file `xlplastic prepare` "
                        f"writes (delete {folder} to rebuild it)") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        got = (index.get("format"), index.get("version")) if isinstance(index, dict) else None
        raise UserError(f"{p}: cache format {got}; expected ({FORMAT!r}, {VERSION}) (delete {folder} to rebuild it)")
    return index


def write_index(folder: AnyPath, index: dict) -> None:
    text = json.dumps(index, indent=1, sort_keys=True)
    p = folder / INDEX
    if is_remote(p):
        p.write_text(text)  # an object appears whole when its upload completes
    else:
        tmp = p.with_name(f"{INDEX}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, p)


def _check_shard(folder: AnyPath, entry: dict, seq_len: int, verify: bool) -> None:
    p = folder / entry["file"]
    rebuild = f"delete {folder} and rerun (or `xlplastic prepare`) to rebuild the cache"
    if not p.exists():
        raise UserError(f"{p}: shard file missing from the cache; expected the {entry['rows']} rows the index lists ({rebuild})")
    want = HEADER_BYTES + entry["rows"] * seq_len * 4
    size = size_of(p)
    if size != want:
        raise UserError(f"{p}: shard is {size} bytes; expected {want} ({entry['rows']} rows of {seq_len} tokens): "
                        f"truncated or damaged ({rebuild})")
    if verify:
        h = hashlib.sha256()
        with p.open("rb") as f:
            f.seek(HEADER_BYTES)
            while chunk := f.read(1 << 24):
                h.update(chunk)
        if h.hexdigest() != entry["sha256"]:
            raise UserError(f"{p}: shard checksum differs from the index; expected sha256 {entry['sha256'][:16]}... ({rebuild})")


def open_cache(folder: AnyPath, tokenizer_sha: str, verify: bool = False) -> PackedLanguage:
    """A complete cache's rows, after checking that it was built with this tokenizer and that every
    shard is there at its full size (`verify`: and has the checksum the index records)."""
    index = read_index(folder)
    if index is None:
        raise UserError(f"{folder}: no {INDEX}; expected a complete cache (`xlplastic prepare` writes it last)")
    if index["tokenizer_sha"] != tokenizer_sha:
        raise UserError(f"{folder}: the cache was built with another tokenizer (sha256 {index['tokenizer_sha'][:12]}, this "
                        f"run's is {tokenizer_sha[:12]}); expected the same tokenizer (delete the folder, or set another "
                        "data.cache_dir)")
    L = index["seq_len"]
    for entry in [index["eval"], *index["shards"]]:
        _check_shard(folder, entry, L, verify)
    train = ShardedRows(folder, index["shards"], L)
    ev = ShardedRows(folder, [index["eval"]], L)
    return PackedLanguage(index["language"], train, ev, int(index["train_tokens"]))
