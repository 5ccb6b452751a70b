"""The relearning pipeline end to end on a tiny lab: each stage trains only its groups, assembly takes
each group from the right run, complete stages are skipped, and bad input stops with one line."""

from __future__ import annotations

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from xlplastic.checkpoint import latest_state_dir
from xlplastic.config import load_config
from xlplastic.errors import UserError
from xlplastic.stages import run_pipeline

OVER = [
    "lab.words=120", "lab.sentences=900", "lab.test_sentences=60",
    "model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "model.mlp_dim=64",
    "data.tokenizer.vocab_size=300", "data.eval_sequences=8", "mesh.data=-1",
    "train.steps=12", "train.batch_size=8", "train.progress=false", "train.log_every=1",
    "pipeline.models.forgetting.forgetting.every=5",
    "pipeline.budgets=[3000]", "pipeline.draws=1",
    "pipeline.task_adapt.train.steps=6", "pipeline.language_adapt.train.steps=6",
    "task.max_train_examples=200",
]


def _params(run_dir):
    state_dir, _ = latest_state_dir(run_dir)
    return ocp.PyTreeCheckpointer().restore(state_dir)["params"]


def _eq(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _without(p, *keys):
    return {k: v for k, v in p.items() if k not in keys}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, request):
    root = request.config.rootpath
    cfg = load_config(root / "configs/quickstart.yaml", OVER)
    d = tmp_path_factory.mktemp("pipeline")
    result = run_pipeline(cfg, d)
    return cfg, d, result


def test_stages_train_only_their_groups(experiment):
    _, d, _ = experiment
    pre = _params(d / "pretrain/forgetting-s0")
    task = _params(d / "task_adapt/forgetting-s0")
    lang = _params(d / "language_adapt/forgetting-s0/syn_perm-3000")
    # task adaptation: token embeddings (and the unused MLM head) frozen bit for bit, the body trained
    assert np.array_equal(task["token_embed"], pre["token_embed"])
    assert _eq(task["mlm_head"], pre["mlm_head"])
    assert not np.array_equal(task["layer_0"]["mlp"]["in_kernel"], pre["layer_0"]["mlp"]["in_kernel"])
    assert "task_head" in task
    # language adaptation: everything but the (re-drawn, new-vocabulary) token embeddings is the pretrained model
    assert _eq(_without(lang, "token_embed", "mlm_head"), _without(pre, "token_embed", "mlm_head"))
    assert _eq(_without(lang["mlm_head"], "output_bias"), _without(pre["mlm_head"], "output_bias"))
    new_bias, old_bias = lang["mlm_head"]["output_bias"], pre["mlm_head"]["output_bias"]
    if new_bias.shape == old_bias.shape:  # same vocabulary size: kept (and frozen), as the reference does
        assert np.array_equal(new_bias, old_bias)
    else:  # another size: fresh zeros, frozen
        assert not np.any(new_bias)
    assert lang["token_embed"].shape[0] != pre["token_embed"].shape[0] or not np.array_equal(lang["token_embed"], pre["token_embed"])


def test_assembly_takes_each_group_from_its_source(experiment):
    _, d, _ = experiment
    task = _params(d / "task_adapt/standard-s0")
    lang = _params(d / "language_adapt/standard-s0/syn_perm-3000")
    both = _params(d / "evaluate/standard-s0/syn_perm-3000")
    assert np.array_equal(both["token_embed"], lang["token_embed"])
    assert _eq(both["task_head"], task["task_head"])
    assert _eq(_without(both, "token_embed", "mlm_head"), _without(task, "token_embed", "mlm_head"))


def test_results_rows_resets_and_report(experiment):
    _, d, result = experiment
    rows = result.results["summary"]
    ev = [r for r in rows if r["stage"] == "evaluate"]
    assert {(r["model"], r["language"], r["metric"]) for r in ev} == {
        ("standard", "syn_perm", "accuracy"), ("forgetting", "syn_perm", "accuracy")}
    assert all(set(r) >= {"model", "stage", "task", "language", "metric", "value"} for r in rows)
    saved = json.loads((d / "results.json").read_text())
    assert saved["summary"] == rows
    # forgetting - standard, paired by seed, beside the rows it is computed from
    (zs,) = [x for x in saved["differences"] if x["stage"] == "evaluate"]
    by = {r["model"]: r["value"] for r in ev}  # one seed, one draw
    assert zs["seeds"] == 1 and zs["seed_std"] == 0.0 and zs["mean"] == pytest.approx(by["forgetting"] - by["standard"])
    metrics = [json.loads(l) for l in (d / "pretrain/forgetting-s0/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if r.get("reset")] == [5, 10]
    report = (d / "report.md").read_text()
    assert "pretrain_loss.png" in report and (d / "pretrain_loss.png").is_file()
    # the report leads with the headline table: source / zero-shot / oracle per model, then what they mean
    head = report.split("## Headline: nli accuracy (wordlevel tokenizer)", 1)[1].split("**Reading:**")[0]
    assert "| model | source (syn) | zero-shot syn_perm, 3k tokens | oracle syn_perm |" in head
    assert "| chance (majority label) |" in head and (d / "headline.png").is_file()


def test_oracle_equals_source_on_a_pure_permutation(experiment):
    """syn_perm re-spells every word and keeps the order: with the gold embeddings the body sees exactly the
    source sentences, so the oracle's zero-shot score IS the source score, bit for bit."""
    _, d, result = experiment
    rows = result.results["summary"]
    for m in ("standard", "forgetting"):
        src = [r["value"] for r in rows if r["stage"] == "task_adapt" and r["model"] == m and r["language"] == "syn"]
        orc = [r["value"] for r in rows if r["stage"] == "oracle" and r["model"] == m and r["language"] == "syn_perm"]
        assert len(src) == len(orc) == 1 and orc == src, m
    task, oracle = _params(d / "task_adapt/standard-s0"), _params(d / "oracle/standard-s0/syn_perm")
    assert _eq(_without(oracle, "token_embed", "mlm_head"), _without(task, "token_embed", "mlm_head"))
    # a permutation of the rows: the same multiset of embedding rows (up to unused ones)
    assert {tuple(r) for r in np.asarray(oracle["token_embed"])} <= {tuple(r) for r in np.asarray(task["token_embed"])}


def test_class_structure_rows_of_each_embedding(experiment):
    """Every pretrained, oracle and relearned embedding matrix is scored on its language's gold word classes;
    the oracle's rows are the source's through the gold dictionary, so its scores are the source's (up to the
    few rare words this 900-sentence source corpus lacks: they share the unk row)."""
    _, d, result = experiment
    rows = result.results["class_structure"]
    assert not [r for r in result.results["summary"] if r["task"] == "embeddings"]  # the summary keeps its rows
    got = {(r["model"], r["stage"], r["language"], r["metric"]): r["value"] for r in rows}
    for m in ("standard", "forgetting"):
        for metric in ("class_r2", "class_1nn"):
            src, orc = got[(m, "pretrain", "syn", metric)], got[(m, "oracle", "syn_perm", metric)]
            relearned = got[(m, "language_adapt", "syn_perm", metric)]
            assert orc == pytest.approx(src, abs=0.01) and 0.0 <= relearned <= 1.0, (m, metric)
        # each oracle row is its gold source word's row: its nearest source word is itself (but the rare
        # words that share the unk row)
        assert got[(m, "oracle", "syn_perm", "source_class_1nn")] > 0.95
        assert 0.0 <= got[(m, "language_adapt", "syn_perm", "source_class_1nn")] <= 1.0
        assert (m, "pretrain", "syn", "source_class_1nn") not in got  # the source is its own reference
    cached = json.loads((d / "language_adapt/standard-s0/syn_perm-3000/class_structure.json").read_text())
    assert cached["syn_perm"]["class_r2"] == got[("standard", "language_adapt", "syn_perm", "class_r2")]
    report = (d / "report.md").read_text().split("## Class structure of the token embeddings", 1)
    assert len(report) == 2 and "**relearned (language adaptation)**" in report[1]
    assert "class_r2" not in report[0]  # not mixed into the task and MLM tables


def test_rerun_skips_complete_stages(experiment, capsys):
    cfg, d, result = experiment
    before = (d / "evaluate/standard-s0/syn_perm-3000/results.json").stat().st_mtime_ns
    again = run_pipeline(cfg, d)
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == 10  # pretrain, task_adapt, oracle, language_adapt, evaluate x 2 models
    assert (d / "evaluate/standard-s0/syn_perm-3000/results.json").stat().st_mtime_ns == before
    assert again.results["summary"] == result.results["summary"]


def test_pretrained_with_a_seed_placeholder_reuses_another_sweeps_pretraining(experiment, tmp_path):
    """`pipeline.pretrained: {m: <sweep>/pretrain/m-s{seed}}`: no pretraining runs, and every later stage
    gives the numbers of the sweep that pretrained them (an adaptation arm without pretraining again)."""
    import shutil

    cfg, d, result = experiment
    shutil.copytree(d / "pretrain", tmp_path / "theirs")  # a copy without its class-structure cache
    for f in (tmp_path / "theirs").glob("*/class_structure.json"):
        f.unlink()
    reuse = {m: str(tmp_path / "theirs" / f"{m}-s{{seed}}") for m in cfg.pipeline.models}
    other = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"pretrained": reuse})})
    again = run_pipeline(other, tmp_path / "arm")
    assert not (tmp_path / "arm" / "pretrain").exists()
    # the reused runs are scored but not written to: they belong to another sweep
    assert [r for r in again.results["class_structure"] if r["stage"] == "pretrain"]
    assert not list((tmp_path / "theirs").glob("*/class_structure.json"))
    key = lambda r: (r["model"], r["stage"], r["metric"], r.get("budget"))  # noqa: E731
    want = {key(r): r["value"] for r in result.results["summary"] if r["stage"] != "pretrain"}
    got = {key(r): r["value"] for r in again.results["summary"]}
    assert got == want and any(k[1] == "evaluate" for k in got)


def test_assembly_refuses_embeddings_of_another_tokenizer(experiment, tmp_path):
    """Pointing the evaluation at the source tokenizer while taking target-language embeddings fails."""
    from xlplastic.finetune import run_task

    cfg, d, _ = experiment
    ecfg = load_config(d / "evaluate/standard-s0/syn_perm-3000/config.yaml",
                       [f"data.tokenizer.path={d / 'pretrain/standard-s0/tokenizer.json'}"])
    with pytest.raises(UserError, match="another tokenizer|shape"):
        run_task(ecfg, tmp_path / "bad", stage="evaluate")


def test_task_run_resumes_to_the_same_result(experiment, tmp_path):
    """A task-adaptation run stopped midway (as SIGTERM would) and rerun equals an uninterrupted one."""
    from xlplastic.finetune import run_task

    _, d, _ = experiment
    cfg = load_config(d / "task_adapt/standard-s0/config.yaml")
    full = run_task(cfg, tmp_path / "full")
    part = run_task(cfg, tmp_path / "resumed", stop_at=3)
    assert part.interrupted and part.final_step == 3
    again = run_task(cfg, tmp_path / "resumed")

    def losses(r):
        return [json.loads(l)["loss"] for l in (r.run_dir / "metrics.jsonl").read_text().splitlines()]

    assert losses(again) == losses(full)
    assert again.results["scores"] == full.results["scores"]


def test_task_run_with_several_steps_per_call_is_identical(experiment, tmp_path):
    """`train.steps_per_call` in a task stage: calls of 4 steps (then single steps) give the same run."""
    from xlplastic.finetune import run_task

    _, d, _ = experiment
    cfg = load_config(d / "task_adapt/standard-s0/config.yaml")
    k4 = load_config(d / "task_adapt/standard-s0/config.yaml", ["train.steps_per_call=4"])
    full, grouped = run_task(cfg, tmp_path / "k1"), run_task(k4, tmp_path / "k4")

    def rows(r):
        return [json.loads(l) for l in (r.run_dir / "metrics.jsonl").read_text().splitlines()]

    assert [r["step"] for r in rows(grouped)] == list(range(1, 7))
    assert [r["loss"] for r in rows(grouped)] == [r["loss"] for r in rows(full)]
    assert grouped.results["scores"] == full.results["scores"]
