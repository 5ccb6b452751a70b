"""Process and file helpers every run needs: who is process 0, barriers, logging, atomic writes, this
process's rows of a global batch, and stopping on a signal at a step all processes agree on."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from xlplastic import paths
from xlplastic.errors import UserError


def is_main() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def log(msg: str) -> None:
    if is_main():
        print(msg, flush=True)


def warn(msg: str) -> None:
    if is_main():
        print(f"xlplastic: warning: {msg}", file=sys.stderr, flush=True)


def sha(text: str) -> str:
    """A fingerprint of a tokenizer (or any text) that checkpoints carry to refuse a mismatched resume."""
    return hashlib.sha256(text.encode()).hexdigest()


def write_json(path: Path, obj: Any) -> None:
    """Writes through a temporary file and a rename: a reader never sees half a file."""
    write_text(path, json.dumps(obj, indent=2))


def write_text(path: Path, text: str) -> None:
    paths.write_text_atomic(path, text)


def local_rows(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """This process's contiguous share of a global batch's example rows."""
    pc, pi = jax.process_count(), jax.process_index()
    per = len(rows) // pc
    mine = rows[pi * per : (pi + 1) * per]
    return {k: v[mine] for k, v in arrays.items()}


def check_run_dir(run_dir) -> Path:
    """The run folder exists (created if need be) and is writable; one line otherwise, before any work.
    A `gs://` URL is a prefix in a bucket: nothing to create, the bucket must exist and take a write."""
    run_dir = paths.as_path(run_dir, resolve=True)
    if paths.is_url(run_dir):
        return _check_bucket_dir(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: the run directory is a file; expected a folder (or a path that does not exist yet)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{run_dir}: cannot create the run directory ({e.strerror}); expected a writable place") from None
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{run_dir}: the run directory is not writable ({e.strerror or errno.errorcode.get(e.errno)}); "
                        "expected a folder this user can write to") from None
    return run_dir


def _check_bucket_dir(run_dir):
    probe = run_dir / f".write-test-{socket.gethostname()}-{os.getpid()}"  # several hosts write to one prefix
    gcsfs_log = logging.getLogger("gcsfs")  # it logs each exhausted retry with a traceback: the one line says it
    level = gcsfs_log.level
    gcsfs_log.setLevel(logging.CRITICAL)
    try:
        if run_dir.is_file():
            raise UserError(f"{run_dir}: the run directory is an object; expected a prefix (folder) in a bucket")
        probe.write_bytes(b"")
        probe.unlink()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - gcsfs/aiohttp raise many types: one line naming the cause
        raise UserError(f"{run_dir}: cannot write to the run directory ({describe_storage_error(e)}); expected an "
                        "existing bucket this user can write to (and credentials, or STORAGE_EMULATOR_HOST)") from None
    finally:
        gcsfs_log.setLevel(level)
    return run_dir


def describe_storage_error(e: BaseException) -> str:
    """The first line of a cloud storage failure, without the library's stack of retries."""
    if isinstance(e, FileNotFoundError):
        return "no such bucket"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def remove_if_untrained(run_dir: Path) -> None:
    """Removes a run folder this command created when nothing in it trained (no checkpoint, no results):
    what is left is the start of a run that failed on its input. Process 0 only."""
    if not is_main() or not run_dir.is_dir():
        return
    names = [p.relative_to(run_dir).parts for p in paths.files_under(run_dir)]
    trained = any(n[-1] == "results.json" or any(a == "checkpoints" and b.isdigit() for a, b in zip(n, n[1:]))
                  for n in names)
    if not trained:
        paths.rmtree(run_dir)


class StopRequest:
    """SIGTERM / SIGINT as a request to stop after the current call and save.

    With one process the handler sets a flag. Several processes must stop at the same step, or their
    collective save deadlocks: SIGTERM is left to JAX's preemption notifier, which tells every process
    and agrees on a step (`reached_preemption_sync_point`, asked after every call by every process)."""

    def __init__(self):
        self.signal: int | None = None
        self.multi = jax.process_count() > 1
        self._old: dict = {}

    def __enter__(self) -> "StopRequest":
        caught = (signal.SIGINT,) if self.multi else (signal.SIGTERM, signal.SIGINT)
        self._old = {s: signal.signal(s, self._on_signal) for s in caught}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def _on_signal(self, signum, _frame) -> None:
        self.signal = signum

    def requested(self, step: int) -> bool:
        if self.multi and _preempted(step):
            self.signal = signal.SIGTERM
        return self.signal is not None


def _preempted(step: int) -> bool:
    """True on every process at the same step once any of them got SIGTERM (multi-process runs)."""
    from jax.experimental import multihost_utils

    try:
        return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # preemption service disabled (jax_enable_preemption_service=False)
        return False
