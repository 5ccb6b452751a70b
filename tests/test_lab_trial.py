"""A reduced quick trial on a lab nobody tuned for: another lab seed and a reversed target language.
Both models must learn the source task, and no relearned embedding may beat the oracle (the same body
with the gold embeddings). The direction of the forgetting effect is the budget study's business
(docs/study_lab_budgets.md), not a test's."""

from __future__ import annotations

import json

import pytest

from cli_helpers import REPO, cli_env, run_cli, run_cmd

OVER = [
    "lab.seed=7", "lab.languages.1.word_order=reverse", "lab.test_sentences=300",
    "model.num_layers=2",  # half the quick trial's depth: the plumbing and the bounds, in half the suite time
    "train.steps=1600", "train.progress=false", "train.schedule.warmup_steps=100",
    "pipeline.draws=1", "pipeline.language_adapt.train.steps=200",
]
TOL = 0.03  # one draw of 300 test pairs: a relearned embedding may match the oracle, it must not clearly pass it


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """The README's main command with overrides, as a user runs it (one CPU device, as on a laptop)."""
    d = tmp_path_factory.mktemp("trial")
    done = run_cli(run_cmd(REPO / "configs/quickstart.yaml", d, *[a for o in OVER for a in ("--set", o)]),
                   cli_env(tmp_path_factory), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lab = json.loads((d / "lab" / "lab.json").read_text())
    assert lab["config"]["seed"] == 7 and lab["languages"]["syn_perm"]["word_order"] == "reverse"
    return json.loads((d / "results.json").read_text())["summary"]


def _score(rows, stage, model):
    (r,) = [r for r in rows if r["stage"] == stage and r["model"] == model and r["metric"] == "accuracy"
            and r["task"] == "nli"]
    return r["value"]


@pytest.mark.parametrize("model", ["standard", "forgetting"])
def test_both_models_learn_the_source_task_and_respect_the_oracle_bound(trial, model):
    source, oracle, zero = (_score(trial, s, model) for s in ("task_adapt", "oracle", "evaluate"))
    assert source >= 0.85, f"{model}: source nli accuracy {source:.3f}"
    assert zero <= oracle + TOL, f"{model}: zero-shot {zero:.3f} above the oracle {oracle:.3f}"
    assert oracle > 0.4, f"{model}: the oracle {oracle:.3f} is at chance (1/3): the assembly lost the body"
