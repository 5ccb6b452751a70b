"""The run loop's contract: outputs in the run directory, and nothing but metrics leaves the device."""

import json

import jax
import numpy as np

import xlplastic.run as run_mod
from xlplastic.config import load_config


def test_run_outputs_and_host_traffic(root, tmp_path, monkeypatch):
    fetched = []
    real_get = jax.device_get

    def spy(tree):
        for leaf in jax.tree.leaves(tree):
            fetched.append(np.shape(leaf))
        return real_get(tree)

    monkeypatch.setattr(run_mod.jax, "device_get", spy)
    cfg = load_config(root / "configs/tiny.yaml", ["train.steps=12", "train.eval_every=5", "checkpoint.every=4",
                                                   "train.log_every=2", "train.progress=false", "mesh.data=2",
                                                   "mesh.fsdp=2", "mesh.tensor=2"])
    res = run_mod.run(cfg, tmp_path / "r")
    # Only scalar metrics came back to the host: never a parameter, gradient or optimizer moment.
    assert fetched and all(s == () for s in fetched), set(fetched)

    d = res.run_dir
    rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]  # log_every=2
    assert all({"step", "loss", "accuracy", "grad_norm", "lr", "tokens_per_s"} <= r.keys() for r in train)
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [5, 10, 12]
    assert all(np.isclose(r["eval_perplexity"], np.exp(r["eval_loss"])) for r in evals)
    # warm-up then linear decay, computed on device
    assert train[0]["lr"] < train[1]["lr"] and train[-1]["lr"] < train[2]["lr"]

    results = json.loads((d / "results.json").read_text())
    assert results["final"]["step"] == 12 and results["final"]["devices"] == 8
    assert {r["metric"] for r in results["summary"]} == {"loss", "accuracy", "perplexity"}
    assert all(set(r) == {"model", "stage", "task", "language", "metric", "value"} for r in results["summary"])
    report = (d / "report.md").read_text()
    assert "![loss](loss.png)" in report and (d / "loss.png").stat().st_size > 1000
    assert list((d / "tensorboard").glob("events.out.tfevents.*"))
    assert (d / "config.yaml").read_text().startswith("name: tiny")
    assert sorted(int(p.name) for p in (d / "checkpoints").iterdir() if p.name.isdigit()) == [8, 12]  # keep=2
