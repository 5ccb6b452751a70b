"""Run-directory logging: metrics.jsonl (one object per logged step), TensorBoard events, console progress.
A run directory in a bucket gets both too: metrics.jsonl through `ObjectLog`, events through tensorboardX's
own gs:// writer (google-cloud-storage)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from xlplastic.paths import is_url


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything before it is valid
    return rows


class ObjectLog:
    """A text file in a bucket, written like a local log: an object cannot be appended to, so the whole
    text is uploaded again, at most every `every_s` seconds (a long run logs thousands of rows) and at
    close. A run stopped by SIGTERM closes it; a killed one loses at most the last `every_s` seconds."""

    def __init__(self, path, text: str = "", every_s: float = 10.0):
        self.path, self.every_s = path, every_s
        self._parts = [text]
        self._uploaded = 0.0
        self._dirty = True
        self.flush(force=True)

    def write(self, text: str) -> None:
        self._parts.append(text)
        self._dirty = True

    def flush(self, force: bool = False) -> None:
        if self._dirty and (force or time.monotonic() - self._uploaded >= self.every_s):
            self.path.write_text("".join(self._parts), encoding="utf-8")
            self._uploaded, self._dirty = time.monotonic(), False

    def close(self) -> None:
        self.flush(force=True)


class MetricsLog:
    """Appends rows; on resume drops rows past the restored step so the file reads as one clean run."""

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.rows = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
        self._tb = None
        if not enabled:
            return
        kept = "".join(json.dumps(r) + "\n" for r in self.rows)
        if is_url(self.path):
            self._file = ObjectLog(self.path, kept)
        else:
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(kept)
            self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:  # optional
                self._tb = None

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        errors = []
        for close in (self._file.close, self._close_tensorboard):
            try:
                close()
            except OSError as e:  # a full disk: close the rest, then report the first failure
                errors.append(e)
        if errors:
            raise errors[0]

    def _close_tensorboard(self) -> None:
        if self._tb is None:
            return
        tb, self._tb = self._tb, None
        try:
            tb.close()
        except OSError:
            # tensorboardX retries its final flush at exit and its writer thread reads a closed queue:
            # mark its writers closed so a failed flush is reported once, here, not as exit tracebacks.
            for w in (getattr(tb, "all_writers", None) or {}).values():
                ev = w.event_writer
                worker = getattr(ev, "_worker", None)
                ev._closed = True
                if worker is not None:
                    worker.stop = lambda: None
                    worker.daemon = True
            raise


class Progress:
    """A rich progress bar on a terminal; a few plain lines otherwise (CI logs stay short)."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total, self.start = total, start
        self.enabled = enabled
        self.tty = enabled and sys.stdout.isatty()
        self._bar = None
        self._every = max(1, (total - start) // 10)
        self._last_print = start
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self._bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn()
            )
            self._task = self._bar.add_task("train", total=total, completed=start, info="")
            self._bar.start()

    def update(self, step: int, info: dict[str, float]) -> None:
        text = "  ".join(f"{k} {v:,.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=text)
        elif self.enabled and (step - self._last_print >= self._every or step == self.total):
            self._last_print = step
            print(f"step {step}/{self.total}  {text}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
