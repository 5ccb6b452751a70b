"""Checkpoint faults a long run meets: a damaged newest checkpoint (five ways) falls back to the previous
intact one with one warning and resumes to the same losses; a full disk during a save is one line, its
own exit status, and the earlier checkpoints stay intact; `checkpoint.keep=0` is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from xlplastic import cli
from xlplastic.checkpoint import MANIFEST, Checkpointer, damage
from xlplastic.config import load_config
from xlplastic.errors import UserError
from xlplastic.run import run

STEPS = 30
ARGS = ["train.steps=30", "checkpoint.every=10", "checkpoint.keep=3", "train.progress=false", "train.log_every=1"]


def _losses(run_dir: Path) -> dict[int, float]:
    import json

    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def runs(root, tmp_path_factory):
    """The uninterrupted reference and a run stopped at step 20 (checkpoints 10 and 20)."""
    base = tmp_path_factory.mktemp("ckpt_faults")
    cfg = load_config(root / "configs/tiny.yaml", ARGS)
    ref = run(cfg, base / "ref").run_dir
    stopped = run(cfg, base / "stopped", stop_at=20).run_dir
    assert sorted(int(p.name) for p in (stopped / "checkpoints").iterdir() if p.name.isdigit()) == [10, 20]
    return cfg, ref, stopped


def _array_files(step_dir: Path) -> list[Path]:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    assert files, list((step_dir / "state").rglob("*"))
    return sorted(files, key=lambda p: -p.stat().st_size)


def _delete(d):
    _array_files(d)[0].unlink()


def _truncate(d):
    f = _array_files(d)[0]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _zero(d):
    f = _array_files(d)[0]
    f.write_bytes(bytes(f.stat().st_size))


def _no_metadata(d):
    shutil.rmtree(d / "meta")


def _empty(d):
    shutil.rmtree(d)
    d.mkdir()


def _no_manifest_and_zeroed(d):  # a save that finished but was killed before its manifest: the restore tells
    (d / MANIFEST).unlink()
    _zero(d)


DAMAGE = {"deleted": _delete, "truncated": _truncate, "zeroed": _zero, "no_metadata": _no_metadata,
          "empty_folder": _empty, "no_manifest_zeroed": _no_manifest_and_zeroed}


def test_manifest_is_written_for_each_checkpoint(runs):
    _, _, stopped = runs
    for step in (10, 20):
        d = stopped / "checkpoints" / str(step)
        assert (d / MANIFEST).is_file() and damage(d) is None


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damaged_newest_falls_back_to_the_previous(runs, tmp_path, capsys, how):
    cfg, ref, stopped = runs
    d = tmp_path / "run"
    shutil.copytree(stopped, d)
    DAMAGE[how](d / "checkpoints" / "20")
    capsys.readouterr()
    res = run(cfg, d)
    err = capsys.readouterr().err
    warnings = [l for l in err.splitlines() if l.startswith("xlplastic: warning:")]
    assert len(warnings) == 1 and "is damaged" in warnings[0] and "resuming from step 10" in warnings[0], err
    assert res.final_step == STEPS and not res.interrupted
    assert (d / "damaged_checkpoints").is_dir() and len(list((d / "damaged_checkpoints").iterdir())) == 1
    got, want = _losses(d), _losses(ref)
    assert [got[s] for s in range(11, STEPS + 1)] == [want[s] for s in range(11, STEPS + 1)]  # bit-identical


def test_every_checkpoint_damaged_is_one_error_and_nothing_moved(runs, tmp_path):
    cfg, _, stopped = runs
    d = tmp_path / "run"
    shutil.copytree(stopped, d)
    for step in (10, 20):
        _truncate(d / "checkpoints" / str(step))
    with pytest.raises(UserError, match="no intact checkpoint"):
        run(cfg, d)
    assert not (d / "damaged_checkpoints").exists()


def test_keep_zero_is_refused(tmp_path):
    with pytest.raises(UserError, match="checkpoint.keep"):
        Checkpointer(tmp_path / "c", keep=0)


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_full_disk_during_a_save(root, tmp_path, capsys):
    """The run folder on a small tmpfs: a run stopped at step 10, the disk then filled, the resumed run's
    save at 20 fails: one `xlplastic: error:` line naming the path, the errno text and checkpoint 10, exit
    3; checkpoint 10 is intact and a rerun once there is space finishes with the reference's losses."""
    mnt = tmp_path / "disk"
    if not _mount_tmpfs(mnt, "24m"):
        pytest.skip("needs root and `mount -t tmpfs` (a small filesystem to fill); not available here")
    try:
        d = mnt / "run"
        cache = tmp_path / "cache"  # the data cache elsewhere: only the run's own files are on the small disk
        args = ["run", str(root / "configs/tiny.yaml"), "--run-dir", str(d), "--set", f"data.cache_dir={cache}",
                *[x for a in ARGS for x in ("--set", a)]]
        assert cli.main(args + ["--set", "train.steps=10"]) == 0  # (train.steps moves the schedule: a different run)
        shutil.rmtree(d)
        cfg = load_config(root / "configs/tiny.yaml", ARGS + [f"data.cache_dir={cache}"])
        run(cfg, d, stop_at=10)
        filler = mnt / "filler"
        # fill the disk but for a few KB; unbuffered, so that close() has nothing left to flush (a buffered
        # file re-raised ENOSPC from its close, now and then, on the last partial block)
        with open(filler, "wb", buffering=0) as f:
            try:
                while f.write(bytes(1 << 16)):
                    pass
            except OSError:
                pass
        with open(filler, "r+b") as f:  # room for the small files (config, metrics), not for a checkpoint
            f.truncate(filler.stat().st_size - (256 << 10))
        capsys.readouterr()
        code = cli.main(args)
        out = capsys.readouterr()
        lines = [l for l in out.err.splitlines() if l.strip()]
        assert code == 3, out.err[-3000:]
        assert len(lines) == 1 and lines[0].startswith("xlplastic: error: checkpoint save to "), out.err[-3000:]
        assert "No space left on device" in lines[0] and str(d / "checkpoints" / "10") in lines[0], lines[0]
        assert damage(d / "checkpoints" / "10") is None
        assert not list((d / "checkpoints").glob("*tmp*"))
        filler.unlink()
        assert cli.main(args) == 0
        ref = tmp_path / "ref"
        run(cfg, ref)
        assert _losses(d) == _losses(ref)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
