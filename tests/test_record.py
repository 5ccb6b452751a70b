"""A run directory is a record: a rerun whose config changes what is computed is refused with one line
naming the keys, and config.yaml stays byte-identical; a key that only changes how the run is watched
is free; `--allow-change train.steps` extends a run and records it. Plus the run-dir checks that come
before any work: a file, or a read-only folder."""

import json
import os

import pytest

from xlplastic import cli
from xlplastic.config import load_config
from xlplastic.errors import UserError
from xlplastic.run import run

BASE = ["train.steps=6", "checkpoint.every=3", "train.progress=false"]


@pytest.fixture()
def trained(root, tmp_path):
    cfg = load_config(root / "configs/tiny.yaml", BASE)
    d = run(cfg, tmp_path / "r").run_dir
    return root, d, (d / "config.yaml").read_bytes()


@pytest.mark.parametrize("change, key", [
    ("train.optimizer.lr=5e-3", "train.optimizer.lr"),
    ("train.seed=1", "train.seed"),
    ("train.batch_size=16", "train.batch_size"),
    ("train.schedule.warmup_steps=2", "train.schedule.warmup_steps"),
    ("model.mlp_dim=256", "model.mlp_dim"),
    ("data.mask_prob=0.2", "data.mask_prob"),
    ("train.steps=12", "train.steps"),
])
def test_changed_config_is_refused_and_config_yaml_untouched(trained, change, key):
    root, d, before = trained
    cfg = load_config(root / "configs/tiny.yaml", BASE + [change])
    with pytest.raises(UserError, match="trained with another config") as e:
        run(cfg, d)
    assert key in str(e.value) and "\n" not in str(e.value)
    assert (d / "config.yaml").read_bytes() == before
    if key == "train.steps":
        assert "--allow-change train.steps" in str(e.value)


def test_neutral_change_is_accepted(trained):
    root, d, _ = trained
    res = run(load_config(root / "configs/tiny.yaml", BASE + ["train.log_every=2", "checkpoint.keep=5"]), d)
    assert res.final_step == 6 and not (d / "changes.jsonl").exists()


def test_allow_change_extends_the_run_and_records_it(trained, capsys):
    root, d, _ = trained
    args = ["run", str(root / "configs/tiny.yaml"), "--run-dir", str(d)] + [x for a in BASE for x in ("--set", a)]
    assert cli.main(args + ["--set", "train.steps=9", "--allow-change", "train.seed"]) == 2
    assert "not a safe extension" in capsys.readouterr().err
    assert cli.main(args + ["--set", "train.steps=9", "--allow-change", "train.steps"]) == 0
    change = [json.loads(l) for l in (d / "changes.jsonl").read_text().splitlines()]
    assert change == [{"from_step": 6, "keys": ["train.steps"]}]
    assert "steps: 9" in (d / "config.yaml").read_text()


def test_run_dir_that_is_a_file_is_one_line(root, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert cli.main(["run", str(root / "configs/tiny.yaml"), "--run-dir", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the check needs a normal user")
def test_read_only_run_dir_is_one_line(root, tmp_path, capsys):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        assert cli.main(["run", str(root / "configs/tiny.yaml"), "--run-dir", str(d)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not writable" in err[0]
    finally:
        d.chmod(0o700)
