"""Local paths and cloud storage URLs (`gs://bucket/...`) behind one pathlib-style type.

Why: on a TPU pod the run directory, the corpora and the tokenizer live in a bucket. `as_path` gives a
`pathlib.Path` for a local path and an `etils.epath.Path` (gcsfs underneath) for a URL, so the code that
reads and writes run files calls the same methods for both. What object stores lack (appending,
renaming, recursive glob, memory maps) is handled here, once: an object is published whole when its
upload ends, so writing it directly is what a temporary file and a rename are locally.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Union

from xlplastic.errors import UserError

SCHEMES = ("gs://",)
AnyPath = Union[Path, "epath.Path"]  # noqa: F821 - epath is imported only when a URL is used


def is_url(p) -> bool:
    return str(p).startswith(SCHEMES)


def as_path(p, *, resolve: bool = False) -> AnyPath:
    """`gs://...` -> an epath.Path; anything else -> pathlib.Path, `~` expanded (absolute with `resolve`)."""
    if is_url(p):
        return _remote(str(p))
    local = Path(p).expanduser()
    return local.resolve() if resolve else local


def _remote(url: str):
    point_at_emulator()
    try:
        import gcsfs  # noqa: F401 - epath's gs:// backend (fsspec) needs it
        from etils import epath
    except ImportError:
        raise UserError(f"{url}: cloud storage paths need gcsfs and etils; expected pip install 'xlplastic[gcs]'") from None
    _fs()  # created with xlplastic's settings before epath first asks for it
    return epath.Path(url)


def point_at_emulator() -> None:
    """With STORAGE_EMULATOR_HOST set (honoured by gcsfs and google-cloud-storage), points TensorStore,
    which Orbax writes arrays with, at the same endpoint (TENSORSTORE_GCS_HTTP_URL) and skips credential
    discovery everywhere (an emulator takes none; discovery would probe the GCE metadata server)."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if host in ("", "default"):
        return
    url = host if host.startswith(("http://", "https://")) else f"http://{host}"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # TensorStore's fixed-token provider
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # no storage-control API on an emulator
    import fsspec.config

    fsspec.config.conf.setdefault("gcs", {}).setdefault("token", "anon")


def _fs():
    """The gcsfs filesystem epath uses (fsspec caches one instance per set of arguments). Its listing
    cache is off: TensorStore writes checkpoint objects without telling it."""
    import fsspec.config

    fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)
    return fsspec.filesystem("gcs", finalize_on_close=True)


def write_text_atomic(path: AnyPath, text: str) -> None:
    """A reader never sees half a file: locally a temporary file and a rename; in a bucket the object
    appears only when its upload is complete."""
    if is_url(path):
        path.write_text(text, encoding="utf-8")
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def save_figure(fig, path: AnyPath, **savefig_kw) -> None:
    """Saves a matplotlib figure as bytes first (matplotlib cannot open a bucket object), then closes it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format=str(path).rsplit(".", 1)[-1], **savefig_kw)
    plt.close(fig)
    path.write_bytes(buf.getvalue())


def append_text(path: AnyPath, text: str) -> None:
    """Appends (an object cannot be appended to: it is rewritten with the new text at its end)."""
    if is_url(path):
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        path.write_text(old + text, encoding="utf-8")
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def files_under(root: AnyPath) -> list[AnyPath]:
    """Every file below `root`, sorted (one listing call in a bucket, where `**` globs are refused)."""
    if not is_url(root):
        return sorted(p for p in root.rglob("*") if p.is_file())
    return sorted(_remote(f"gs://{k}") for k in _fs().find(str(root)))


def size(path: AnyPath) -> int:
    st = path.stat()
    return st.st_size if hasattr(st, "st_size") else st.length


def rmtree(path: AnyPath) -> None:
    """Removes a folder and what it holds; missing is fine."""
    if is_url(path):
        try:
            path.rmtree(missing_ok=True)
        except FileNotFoundError:
            pass
        return
    shutil.rmtree(path, ignore_errors=True)


def move(src: AnyPath, dst: AnyPath) -> None:
    """Moves a folder. A bucket has no folders to rename: each object is copied server-side, then the
    originals are deleted (gcsfs's own mv tries the newer objects.move API first, and retries it for
    half a minute per object where it is missing, e.g. on emulators)."""
    if is_url(src):
        fs = _fs()
        fs.copy(str(src), str(dst), recursive=True)
        fs.rm(str(src), recursive=True)
        return
    shutil.move(str(src), str(dst))


def data_cache_dir(cache_dir: str | None, run_dir: AnyPath) -> AnyPath:
    """Where a run's packed rows are (`run` and `prepare` ask the same): `data.cache_dir` (a `gs://` one,
    which every host of a pod can share, is read by range reads); else inside a local run folder; for a
    run in a bucket, a local folder named after its URL (local rows are memory-mapped)."""
    if cache_dir:
        return as_path(cache_dir)
    if not is_url(run_dir):
        return run_dir / "data_cache"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "xlplastic" / "data_cache" / str(run_dir).replace("://", "/", 1)


def read_json_object(path: AnyPath, expected: str) -> dict:
    """A JSON file whose top level is an object; anything else is one UserError line saying `expected`."""
    import json

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({type(e).__name__}: {e}); expected {expected}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: top level is a {type(raw).__name__}; expected {expected}")
    return raw
