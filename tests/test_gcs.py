"""Run directories and corpora in a bucket (`gs://`), against a GCS JSON API emulator on localhost
(tests/gcs_emulator.py, started for this module and stopped after).

The must-show: a run into `gs://` that gets SIGTERM and is rerun reproduces the local run's losses bit
for bit, with every file of the run folder (checkpoints through Orbax/TensorStore, the rest through
etils.epath/gcsfs) in the bucket. Everything is read back through the emulator's HTTP API, not through
the code under test.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import pytest

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

from cli_helpers import (  # noqa: E402
    HANG,
    QUIET,
    REPO,
    TINY,
    Background,
    assert_one_line_error,
    cached_run,
    cli_env,
    losses,
    run_cli,
    run_cmd,
    wait_until,
)
from gcs_emulator import Emulator  # noqa: E402

STEPS = 60
ARGS = QUIET + ("--set", f"train.steps={STEPS}", "--set", "checkpoint.every=10")  # test_resume's reference run


@pytest.fixture(scope="module")
def emulator():
    e = Emulator()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(scope="module")
def env(tmp_path_factory, emulator, cache_home):
    return cli_env(tmp_path_factory, XDG_CACHE_HOME=str(cache_home), **emulator.env())


def _rows(emulator: Emulator, prefix: str) -> list[dict]:
    text = emulator.read(f"{prefix}/metrics.jsonl")
    return [json.loads(line) for line in (text or b"").decode().splitlines()]


def _train(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "loss" in r]


def _committed(emulator: Emulator, prefix: str) -> list[int]:
    """Checkpoint steps Orbax finalized: on GCS a step folder is complete once it holds commit_success.txt."""
    rels = [n[len(f"{prefix}/checkpoints/"):].split("/") for n in emulator.names(f"{prefix}/checkpoints/")]
    return sorted(int(r[0]) for r in rels if len(r) == 2 and r[0].isdigit() and r[1] == "commit_success.txt")


def test_gs_run_dir_stopped_by_sigterm_resumed_and_repaired_equals_the_local_run(tmp_path, tmp_path_factory, emulator, env,
                                                                          cache_home):
    reference = losses(cached_run(tmp_path_factory, "tiny-60", ARGS, cli_env(tmp_path_factory)))
    assert len(reference) == STEPS
    prefix = "runs/resume"
    cmd = run_cmd(TINY, f"gs://{emulator.bucket}/{prefix}", *ARGS)

    bg = Background(cmd, env, tmp_path, "first")
    wait_until(lambda: 10 in _committed(emulator, prefix), bg.proc, timeout=HANG,
               what="checkpoint 10 committed in the bucket", poll=0.05)
    bg.proc.send_signal(signal.SIGTERM)
    first = bg.wait(timeout=HANG)
    assert first.returncode == 143, first.stderr[-3000:]
    stopped = int(re.search(r"stopped at step (\d+) \(signal 15\)", first.stdout).group(1))
    assert 10 <= stopped < STEPS
    assert _committed(emulator, prefix)[-1] == stopped  # saved at the step it stopped at, in the bucket
    rows = _train(_rows(emulator, prefix))
    assert [r["step"] for r in rows] == list(range(1, stopped + 1))  # metrics.jsonl uploaded at close
    assert [r["loss"] for r in rows] == reference[:stopped]

    second = run_cli(cmd, env, timeout=HANG)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed from gs://{emulator.bucket}/{prefix}/checkpoints/{stopped} (step {stopped})" in second.stdout
    rows = _train(_rows(emulator, prefix))
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # each step once
    assert [r["loss"] for r in rows] == reference  # bitwise
    results = json.loads(emulator.read(f"{prefix}/results.json"))
    assert results["losses"] == reference and results["final"]["step"] == STEPS

    names = emulator.names(f"{prefix}/")
    for f in ("config.yaml", "tokenizer.json", "tokenizer.settings.json", "report.md", "loss.png"):
        assert f"{prefix}/{f}" in names, f
    assert any(n.startswith(f"{prefix}/tensorboard/events.out.tfevents.") for n in names)
    assert _committed(emulator, prefix)[-2:] == [50, 60]  # keep: 2, the older ones deleted in the bucket
    manifest = json.loads(emulator.read(f"{prefix}/checkpoints/60/xlplastic_manifest.json"))
    assert any(k.startswith("state/") for k in manifest["files"])
    assert not [n for n in names if ".write-test-" in n]
    # the packed rows are memory-mapped: they stay on local disk, in a folder named after the run's URL
    assert [p for p in (cache_home / "xlplastic" / "data_cache" / "gs" / emulator.bucket / prefix).rglob("*") if p.is_file()]
    # a tokenizer written to the bucket is the bytes a local run writes
    local = cached_run(tmp_path_factory, "tiny-60", ARGS, cli_env(tmp_path_factory))
    assert emulator.read(f"{prefix}/tokenizer.json") == (local / "tokenizer.json").read_bytes()

    # a damaged newest checkpoint (an array file cut short in the bucket) is set aside beside checkpoints/,
    # and the rerun trains steps 51-60 again from checkpoint 50, to the same losses
    shard = max((n for n in names if n.startswith(f"{prefix}/checkpoints/60/state/") and "/d/" in n),
                key=lambda n: len(emulator.read(n)))
    emulator.write(shard, emulator.read(shard)[:-7])
    third = run_cli(cmd, env, timeout=HANG)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"resumed from gs://{emulator.bucket}/{prefix}/checkpoints/50 (step 50)" in third.stdout
    assert "checkpoints/60 is damaged" in third.stderr and "moved to" in third.stderr
    moved = [n for n in emulator.names(f"{prefix}/damaged_checkpoints/") if n.endswith("/xlplastic_manifest.json")]
    assert len(moved) == 1 and moved[0].startswith(f"{prefix}/damaged_checkpoints/60-")
    rows = _train(_rows(emulator, prefix))
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == reference
    assert _committed(emulator, prefix)[-1] == 60

    # a run in a bucket read by another command: exported to HF, the same files as the local run's export
    for src, out in ((f"gs://{emulator.bucket}/{prefix}", tmp_path / "hf-gs"), (local, tmp_path / "hf-local")):
        done = run_cli([sys.executable, "-m", "xlplastic.cli", "export", str(src), "--hf", str(out), "--arch", "roberta"], env)
        assert done.returncode == 0, done.stderr[-3000:]
    exported = sorted(p.name for p in (tmp_path / "hf-local").iterdir())
    assert "model.safetensors" in exported and sorted(p.name for p in (tmp_path / "hf-gs").iterdir()) == exported
    for name in exported:
        assert (tmp_path / "hf-gs" / name).read_bytes() == (tmp_path / "hf-local" / name).read_bytes(), name


# The quick trial's relearning pipeline shrunk to seconds: one (forgetting) model, every stage kind
PIPE = QUIET + tuple(a for o in (
    "pipeline.models={forgetting: {forgetting: {every: 8, stop: 12}}}", "lab.sentences=400", "lab.test_sentences=60",
    "train.steps=16", "train.schedule.warmup_steps=2", "pipeline.draws=1", "pipeline.budgets=[800]",
    "pipeline.task_adapt.train.steps=8", "pipeline.task_adapt.train.schedule.warmup_steps=2",
    "pipeline.language_adapt.train.steps=8", "pipeline.language_adapt.train.schedule.warmup_steps=2",
) for a in ("--set", o))


def test_pipeline_in_a_bucket_equals_the_local_pipeline(tmp_path, emulator, env):
    """The relearning pipeline with its run folder in a bucket: the lab, every stage's run (each reading
    the one before it from the bucket: init.from_run, groups_from, the target tokenizer), the report; the
    same numbers as the same pipeline in a local folder, and a rerun skips every stage."""
    config = REPO / "configs" / "quickstart.yaml"
    local = tmp_path / "local"
    done = run_cli(run_cmd(config, local, *PIPE), env, timeout=HANG)
    assert done.returncode == 0, done.stderr[-3000:]
    prefix = "pipe"
    cmd = run_cmd(config, f"gs://{emulator.bucket}/{prefix}", *PIPE)
    done = run_cli(cmd, env, timeout=HANG)
    assert done.returncode == 0, done.stderr[-3000:]

    want = json.loads((local / "results.json").read_text())["summary"]
    got = json.loads(emulator.read(f"{prefix}/results.json"))["summary"]
    assert {r["stage"] for r in got} >= {"task_adapt", "oracle", "evaluate"}
    assert got == want  # every stage's every number, exactly
    names = set(emulator.names(f"{prefix}/"))
    local_files = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file() and "data_cache" not in p.parts}
    for rel in ("report.md", "lab/lab.json", "tokenizers/syn_perm/tokenizer.json", "evaluate/forgetting-s0/syn_perm-800/results.json"):
        assert rel in local_files and f"{prefix}/{rel}" in names, rel
    assert emulator.read(f"{prefix}/lab/syn.nli.train.tsv") == (local / "lab" / "syn.nli.train.tsv").read_bytes()
    assert emulator.read(f"{prefix}/tokenizers/syn_perm/tokenizer.json") == \
        (local / "tokenizers" / "syn_perm" / "tokenizer.json").read_bytes()
    figures = sorted(f for f in local_files if f.endswith(".png") and "/" not in f)
    assert figures and all(f"{prefix}/{f}" in names for f in figures)

    again = run_cli(cmd, env, timeout=HANG)  # complete stages are records: skipped, not rerun
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("complete, skipped") == 5, again.stdout[-3000:]
    assert json.loads(emulator.read(f"{prefix}/results.json"))["summary"] == want


def _text_config(tmp_path: Path, data: str) -> Path:
    cfg = tmp_path / f"text-{len(list(tmp_path.glob('text-*.yaml')))}.yaml"
    synthetic = "    - {language: syn, kind: synthetic, synthetic_sentences: 600, synthetic_words: 200, synthetic_seed: 0}"
    assert synthetic in TINY.read_text()
    cfg.write_text(TINY.read_text().replace(synthetic, data))
    return cfg


def test_corpus_and_tokenizer_read_from_a_bucket_train_like_local_files(tmp_path, emulator, env):
    lines = [" ".join(f"w{(i * 7 + j * 3) % 97}" for j in range(12)) for i in range(400)]
    text = ("\n".join(lines) + "\n").encode()
    (tmp_path / "en.txt").write_bytes(text)
    emulator.write("data/en.txt", text)
    args = QUIET + ("--set", "train.steps=4", "--set", "checkpoint.every=0")

    local = tmp_path / "local"
    done = run_cli(run_cmd(_text_config(tmp_path, f"    - {{language: en, kind: text, path: {tmp_path / 'en.txt'}}}"),
                           local, *args), env)
    assert done.returncode == 0, done.stderr[-3000:]
    emulator.write("tok/tokenizer.json", (local / "tokenizer.json").read_bytes())

    remote = tmp_path / "remote"  # relative corpus path under a gs:// data_dir, and a tokenizer in the bucket
    cfg = _text_config(tmp_path, "    - {language: en, kind: text, path: en.txt}")
    done = run_cli(run_cmd(cfg, remote, *args, "--set", f"data.data_dir=gs://{emulator.bucket}/data",
                           "--set", f"data.tokenizer.path=gs://{emulator.bucket}/tok/tokenizer.json"), env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert losses(remote) == losses(local) and len(losses(local)) == 4
    assert (remote / "tokenizer.json").read_bytes() == (local / "tokenizer.json").read_bytes()


def test_cache_in_a_bucket_prepared_then_trained_on_like_a_local_cache(tmp_path, emulator, env):
    """`data.cache_dir` in a bucket (the cache every host of a pod can share): `xlplastic prepare` writes
    its shards and index there, the run reads its rows by range reads, and trains as on a local cache."""
    args = QUIET + ("--set", "train.steps=6", "--set", "checkpoint.every=0")
    local = tmp_path / "local"
    done = run_cli(run_cmd(TINY, local, *args), env)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = tmp_path / "remote"
    cache = ("--set", f"data.cache_dir=gs://{emulator.bucket}/cache")
    done = run_cli([sys.executable, "-m", "xlplastic.cli", "prepare", str(TINY), "--run-dir", str(remote), *cache,
                    "--workers", "2"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    names = emulator.names("cache/")
    assert any(n.endswith("/index.json") for n in names) and any(re.search(r"/train-\d+\.npy$", n) for n in names)
    assert not any("/.parts/" in n for n in names)  # the packing's scratch files are gone
    done = run_cli(run_cmd(TINY, remote, *args, *cache), env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "building the data cache" not in done.stdout  # the prepared one, as it is
    assert losses(remote) == losses(local) and len(losses(local)) == 6
    index = next(n for n in names if n.endswith("/index.json"))
    shard = next(n for n in names if n.startswith(index.rsplit("/", 1)[0]) and n.endswith(".npy") and "/train-" in n)
    local_shard = next((local / "data_cache").rglob(shard.rsplit("/", 1)[1]))
    assert emulator.read(shard) == local_shard.read_bytes()  # the same bytes as the local cache's shard


def test_bad_cloud_inputs_are_one_line(tmp_path, emulator, env):
    # a bucket that does not exist: refused before any work, nothing created anywhere
    done = run_cli(run_cmd(TINY, "gs://no-such-bucket-xlp/run", *QUIET), env)
    assert_one_line_error(done, "gs://no-such-bucket-xlp/run", "bucket")
    # without the optional dependencies (gcsfs hidden): one line naming the extra to install
    shadow = tmp_path / "no-gcsfs" / "gcsfs"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named gcsfs')\n")
    done = run_cli(run_cmd(TINY, f"gs://{emulator.bucket}/run", *QUIET), {**env, "PYTHONPATH": str(shadow.parent)})
    assert_one_line_error(done, f"gs://{emulator.bucket}/run", "xlplastic[gcs]")
