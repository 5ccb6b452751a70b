"""Shared helpers for the tests that drive `xlplastic run` as a subprocess (resume, errors, distributed).

Every subprocess gets a clean CPU-only environment and a persistent JAX compilation cache, so only the
first run of each shape pays for XLA compilation (the compiled code is the same either way: the cache is
keyed by the program). `cached_run` memoizes a whole run per session, so test modules that need the
same uninterrupted reference share it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
QUIET = ("--set", "train.progress=false")


def _session_dir(tmp_path_factory, name: str) -> Path:
    d = tmp_path_factory.getbasetemp() / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def cli_env(tmp_path_factory, **extra: str) -> dict[str, str]:
    """CPU-only JAX with a persistent compilation cache (the suite's, set in conftest, else one for this
    session); no other inherited XLA/JAX/launcher settings."""
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(_session_dir(tmp_path_factory, "jax-cache"))
    drop = ("XLA_", "JAX_", "XLPLASTIC_", "SLURM_", "TPU_", "CUDA_VISIBLE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def run_cmd(config: str | Path, run_dir: Path | None, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "xlplastic.cli", "run", str(config)]
    if run_dir is not None:
        cmd += ["--run-dir", str(run_dir)]
    return cmd + list(args)


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


# Every timeout here is a hang guard, never a speed check: under the suite's two xdist workers a run can take
# twice as long as alone, and a test must not fail because the machine is slow.
HANG = 600.0


def run_cli(cmd: list[str], env: dict[str, str], timeout: float = HANG) -> Done:
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return Done(p.returncode, p.stdout, p.stderr)


class Background:
    """A CLI run in the background with its output in files (no pipe to fill while we poll)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_dir: Path, name: str = "run"):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=self._out, stderr=self._err, text=True)

    def wait(self, timeout: float = HANG) -> Done:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._out.close()
            self._err.close()
        return Done(rc, self.out_path.read_text(), self.err_path.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line still being written
    return rows


def train_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "loss" in r]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in train_rows(run_dir)]


def last_step(run_dir: Path) -> int:
    rows = train_rows(run_dir)
    return rows[-1]["step"] if rows else 0


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Finalized checkpoints (Orbax writes `<step>.orbax-checkpoint-tmp*` first and renames when complete)."""
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def checkpoint_entries(run_dir: Path) -> list[str]:
    d = run_dir / "checkpoints"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def wait_until(pred, proc: subprocess.Popen, timeout: float, what: str, poll: float = 0.002) -> None:
    """Polls `pred()` until true; fails if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def cached_run(tmp_path_factory, name: str, args: tuple[str, ...], env: dict[str, str]) -> Path:
    """An uninterrupted run, done once per session (keyed by `name`); callers copy it before changing it."""
    d = _session_dir(tmp_path_factory, "reference-runs") / name
    if not (d / "results.json").exists():
        shutil.rmtree(d, ignore_errors=True)
        done = run_cli(run_cmd(TINY, d, *args), env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (d / "results.json").exists()
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def assert_one_line_error(done: Done, *needles: str) -> str:
    """Exit 2, exactly one stderr line `xlplastic: error: ...` naming every needle, and no traceback."""
    assert done.returncode == 2, f"exit {done.returncode}\nstdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-4000:]}"
    lines = done.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{done.stderr[-4000:]}"
    line = lines[0]
    assert line.startswith("xlplastic: error: "), line
    assert "Traceback" not in done.stdout + done.stderr
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    return line
