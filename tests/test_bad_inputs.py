"""Bad input to `xlplastic run`, table-driven: malformed files, unknown keys at every level, wrong types,
out-of-range values, bad parameter-group names, bad `--set`, cross-field violations and bad pipeline stage
partials. Every case runs in this process through `xlplastic.cli.main` and must exit 2 with exactly one
stderr line `xlplastic: error: ...` naming the offending key or file, before anything is written: the run
directory is not even created. No case reaches JAX work (the whole file takes seconds).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xlplastic import cli
from xlplastic.config import deep_merge, load_config

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"

# A small valid masked-LM config; each case changes one thing.
BASE: dict = {
    "name": "bad_inputs",
    "model": {"preset": "tiny", "max_positions": 64, "dropout": 0.0, "attention_dropout": 0.0},
    "data": {
        "corpora": [{"language": "syn", "kind": "synthetic", "synthetic_sentences": 50, "synthetic_words": 30}],
        "tokenizer": {"kind": "wordlevel", "vocab_size": 100, "min_frequency": 1},
        "seq_len": 32,
        "eval_sequences": 2,
    },
    "train": {"steps": 2, "batch_size": 4, "progress": False},
    "checkpoint": {"every": 0},
}
TASK = {"task": {"kind": "classification", "train": "t.tsv", "test": {"syn": "t.tsv"}, "seq_len": 32}}
CODE_SWITCH = {"dictionary": "d.txt", "rate": 0.3}
SEPARATE = {"model": {"languages": ["syn", "xx"], "separate": {"embeddings": True}}}


class Case:
    """One bad input: `over` deep-merged onto BASE (or onto the quickstart pipeline with `pipeline=True`),
    or the file's raw `text`, or a `setup(tmp_path) -> config path`; `args` go to the command line."""

    def __init__(self, id, needles, over=None, *, text=None, setup=None, args=(), pipeline=False):
        self.id, self.needles, self.over, self.text, self.setup = id, list(needles), over, text, setup
        self.args, self.pipeline = list(args), pipeline

    def write(self, tmp: Path) -> Path:
        if self.setup is not None:
            return self.setup(tmp)
        path = tmp / "bad.yaml"
        if self.text is not None:
            (path.write_bytes if isinstance(self.text, bytes) else path.write_text)(self.text)
        elif self.pipeline:
            path.write_text(yaml.safe_dump({"base": str(QUICKSTART), **(self.over or {})}))
        else:
            path.write_text(yaml.safe_dump(deep_merge(BASE, self.over or {})))
        return path


def _sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _tiny(tmp: Path) -> Path:
    return REPO / "configs" / "tiny.yaml"


def _missing(tmp: Path) -> Path:
    return tmp / "nope.yaml"


def _folder(tmp: Path) -> Path:
    (tmp / "conf.yaml").mkdir()
    return tmp / "conf.yaml"


def _loop(tmp: Path) -> Path:
    (tmp / "a.yaml").write_text("base: b.yaml\nname: a\n")
    (tmp / "b.yaml").write_text("base: a.yaml\nname: b\n")
    return tmp / "a.yaml"


def _self_loop(tmp: Path) -> Path:
    (tmp / "self.yaml").write_text("base: self.yaml\n")
    return tmp / "self.yaml"


def _missing_base(tmp: Path) -> Path:
    (tmp / "child.yaml").write_text("base: absent_base.yaml\nname: child\n")
    return tmp / "child.yaml"


CASES = [
    # --- the file itself ------------------------------------------------------------------------------
    Case("malformed-yaml", ["malformed YAML", "bad.yaml:4:"], text="name: x\ntrain:\n  steps: [1, 2\n"),
    Case("yaml-tab-indent", ["malformed YAML", "bad.yaml"], text="train:\n\tsteps: 3\n"),
    Case("yaml-duplicate-key", ["duplicate key `train`", "bad.yaml:3"], text="train: {steps: 2}\nname: x\ntrain: {seed: 1}\n"),
    Case("empty-file", ["bad.yaml", "empty config file"], text=""),
    Case("comments-only-file", ["bad.yaml", "empty config file"], text="# nothing here\n\n"),
    Case("top-level-list", ["bad.yaml", "expected a mapping"], text="- a\n- b\n"),
    Case("top-level-scalar", ["bad.yaml", "top level is a str"], text="hello\n"),
    Case("not-utf8", ["bad.yaml", "not UTF-8"], text=b"name: caf\xe9\n"),
    Case("missing-file", ["config file not found", "nope.yaml"], setup=_missing),
    Case("folder-not-file", ["conf.yaml", "is a folder"], setup=_folder),
    Case("base-loop", ["loops back", "a.yaml -> b.yaml -> a.yaml"], setup=_loop),
    Case("base-self-loop", ["self.yaml", "loops back"], setup=_self_loop),
    Case("base-missing", ["child.yaml", "`base: absent_base.yaml` not found"], setup=_missing_base),
    Case("base-not-a-path", ["bad.yaml", "`base` must be a path"], text="base: 3\n"),
    # --- unknown keys, at every level -------------------------------------------------------------------
    Case("unknown-section", ["unknown config key `trian`", "did you mean `train`?"], {"trian": {"steps": 3}}),
    Case("unknown-model-key", ["`model.hidden_sise`", "did you mean `model.hidden_size`?"], {"model": {"hidden_sise": 32}}),
    Case("unknown-separate-key", ["`model.separate.embedings`"], {"model": {"separate": {"embedings": True}}}),
    Case("unknown-mesh-key", ["`mesh.dta`", "did you mean `mesh.data`?"], {"mesh": {"dta": 1}}),
    Case("unknown-data-key", ["`data.seq_length`", "did you mean `data.seq_len`?"], {"data": {"seq_length": 32}}),
    Case("unknown-corpus-key", ["`data.corpora.0.kindd`", "did you mean `data.corpora.0.kind`?"],
         {"data": {"corpora": [{"language": "syn", "kind": "synthetic", "kindd": "text"}]}}),
    Case("unknown-code-switch-key", ["`data.corpora.0.code_switch.rat`"],
         {"data": {"corpora": [{"kind": "synthetic", "code_switch": {"dictionary": "d.txt", "rat": 0.3}}]}}),
    Case("unknown-tokenizer-key", ["`data.tokenizer.vocab`"], {"data": {"tokenizer": {"vocab": 100}}}),
    Case("unknown-train-key", ["`train.optimiser`", "did you mean `train.optimizer`?"], {"train": {"optimiser": {"lr": 1e-3}}}),
    Case("unknown-optimizer-key", ["`train.optimizer.learning_rate`"], {"train": {"optimizer": {"learning_rate": 1e-3}}}),
    Case("unknown-schedule-key", ["`train.schedule.warmup`"], {"train": {"schedule": {"warmup": 5}}}),
    Case("unknown-checkpoint-key", ["`checkpoint.keep_last`"], {"checkpoint": {"keep_last": 2}}),
    Case("unknown-forgetting-key", ["`forgetting.evry`", "did you mean `forgetting.every`?"], {"forgetting": {"evry": 5}}),
    Case("unknown-init-key", ["`init.from`"], {"init": {"from": "x"}}),
    Case("unknown-map-embeddings-key", ["`init.map_embeddings.dictionary`"],
         {"init": {"from_run": "x", "map_embeddings": {"dictionaries": ["d.txt"], "dictionary": "d.txt"}}}),
    Case("unknown-task-key", ["`task.trian`"], deep_merge(TASK, {"task": {"trian": "t.tsv"}})),
    Case("unknown-lab-key", ["`lab.word`", "did you mean `lab.words`?"], {"lab": {"word": 100}}),
    Case("unknown-lab-language-key", ["`lab.languages.0.permut`"], {"lab": {"languages": [{"name": "syn", "permut": 1.0}]}}),
    Case("unknown-analysis-key", ["`analysis.layer`", "did you mean `analysis.layers`?"], {"analysis": {"layer": [0]}}),
    Case("unknown-pipeline-key", ["`pipeline.seed`", "did you mean `pipeline.seeds`?"], {"pipeline": {"seed": [0]}}, pipeline=True),
    Case("unknown-target-key", ["`pipeline.targets.0.lang`"],
         {"pipeline": {"targets": [{"language": "syn_perm", "lang": "x", "corpus": {"kind": "synthetic"}}]}}, pipeline=True),
    # --- wrong types ------------------------------------------------------------------------------------
    Case("int-got-str", ["`train.steps`", "valid integer", "'many'"], {"train": {"steps": "many"}}),
    Case("int-got-float", ["`train.batch_size`", "valid integer", "8.5"], {"train": {"batch_size": 8.5}}),
    Case("int-got-quoted-int", ["bad.yaml", "`train.batch_size`", "valid integer"], {"train": {"batch_size": "8"}}),
    Case("bool-got-str", ["`train.progress`", "valid boolean"], {"train": {"progress": "yes"}}),
    Case("literal", ["`model.norm`", "'post' or 'pre'", "'middle'"], {"model": {"norm": "middle"}}),
    Case("list-got-str", ["`train.trainable`", "valid list"], {"train": {"trainable": "body"}}),
    Case("list-got-mapping", ["`data.corpora`", "valid list"], {"data": {"corpora": {"language": "x"}}}),
    Case("section-got-value", ["`model`"], {"model": 5}),
    Case("unknown-task-kind", ["`task.kind`", "'qaa'"], deep_merge(TASK, {"task": {"kind": "qaa"}})),
    Case("remat-attention-removed", ["`model.remat`", "'none', 'block' or 'dots'"], {"model": {"remat": "attention"}}),
    # --- numeric ranges ---------------------------------------------------------------------------------
    Case("mlm-steps-0", ["train.steps is 0", "expected >= 1"], {"train": {"steps": 0}}),
    Case("steps-negative", ["`train.steps`", "-1", "greater than or equal to 0"], {"train": {"steps": -1}}),
    Case("lr-negative", ["`train.optimizer.lr`", "-0.001"], {"train": {"optimizer": {"lr": -1e-3}}}),
    Case("eps-zero", ["`train.optimizer.eps`", "greater than 0"], {"train": {"optimizer": {"eps": 0.0}}}),
    Case("log-every-0", ["`train.log_every`", "greater than or equal to 1"], {"train": {"log_every": 0}}),
    Case("grad-accum-0", ["`train.grad_accum`", "greater than or equal to 1"], {"train": {"grad_accum": 0}}),
    Case("batch-size-0", ["`train.batch_size`", "greater than or equal to 1"], {"train": {"batch_size": 0}}),
    Case("warmup-negative", ["`train.schedule.warmup_steps`"], {"train": {"schedule": {"warmup_steps": -5}}}),
    Case("mask-prob-0", ["`data.mask_prob`", "greater than 0"], {"data": {"mask_prob": 0.0}}),
    Case("mask-prob-1", ["`data.mask_prob`", "less than 1"], {"data": {"mask_prob": 1.0}}),
    Case("mask-token-prob-above-1", ["`data.mask_token_prob`", "1.2"], {"data": {"mask_token_prob": 1.2}}),
    Case("seq-len-1", ["`data.seq_len`", "greater than or equal to 2"], {"data": {"seq_len": 1}}),
    Case("keep-0", ["`checkpoint.keep`", "got 0", "greater than or equal to 1"], {"checkpoint": {"keep": 0}}),
    Case("checkpoint-every-negative", ["`checkpoint.every`"], {"checkpoint": {"every": -1}}),
    Case("code-switch-rate-above-1", ["`data.corpora.0.code_switch.rate`", "1.5"],
         {"data": {"corpora": [{"kind": "synthetic", "code_switch": {**CODE_SWITCH, "rate": 1.5}}]}}),
    Case("code-switch-share-negative", ["`data.corpora.0.code_switch.max_share`"],
         {"data": {"corpora": [{"kind": "synthetic", "code_switch": {**CODE_SWITCH, "max_share": -0.1}}]}}),
    Case("dropout-1", ["`model.dropout`", "less than 1"], {"model": {"dropout": 1.0}}),
    Case("num-heads-0", ["`model.num_heads`"], {"model": {"num_heads": 0}}),
    Case("forgetting-every-negative", ["`forgetting.every`"], {"forgetting": {"every": -1}}),
    Case("task-seq-len-1", ["`task.seq_len`"], deep_merge(TASK, {"task": {"seq_len": 1}})),
    Case("analysis-fit-share-1", ["`analysis.fit_share`", "less than 1"], {"analysis": {"fit_share": 1.0}}),
    Case("lab-permute-above-1", ["lab.languages[0]", "permute is 1.5"], {"lab": {"languages": [{"name": "syn", "permute": 1.5}]}}),
    Case("pipeline-draws-0", ["`pipeline.draws`"], {"pipeline": {"draws": 0}}, pipeline=True),
    Case("pipeline-budget-0", ["`pipeline.budgets.0`"], {"pipeline": {"budgets": [0]}}, pipeline=True),
    # --- parameter-group names --------------------------------------------------------------------------
    Case("reinit-misspelt", ["init.reinit", "unknown parameter group `token_embeding`", "token_embedding, position_embedding"],
         {"init": {"reinit": ["token_embeding"]}}),
    Case("reinit-absent-group", ["init.reinit", "`language_embedding`", "expected some of"],
         {"init": {"reinit": ["language_embedding"]}}),
    Case("reinit-absent-copy", ["init.reinit", "`body@syn`", "token_embedding@syn"],
         deep_merge(SEPARATE, {"init": {"reinit": ["body@syn"]}})),
    Case("groups-from-misspelt", ["init.groups_from", "`bdy`"], {"init": {"from_run": "x", "groups_from": {"bdy": "y"}}}),
    Case("trainable-misspelt", ["train.trainable", "unknown parameter group `bodyy`"], {"train": {"trainable": ["bodyy"]}}),
    Case("trainable-unknown-copy", ["train.trainable", "`token_embedding@fr`"], {"train": {"trainable": ["token_embedding@fr"]}}),
    Case("trainable-selects-nothing", ["train.trainable", "selects no parameter"], {"train": {"trainable": ["task_head"]}}),
    Case("forgetting-groups-misspelt", ["forgetting.groups", "`token_embeding`"],
         {"forgetting": {"every": 1, "groups": ["token_embeding"]}}),
    Case("forgetting-groups-absent", ["forgetting.groups", "`task_head`", "no task head"],
         {"forgetting": {"every": 1, "groups": ["task_head"]}}),
    # --- command line: --set ----------------------------------------------------------------------------
    Case("set-without-equals", ["--set 'train.steps'", "expected KEY=VALUE"], args=_sets("train.steps")),
    Case("set-empty-key", ["--set =3", "empty part"], args=_sets("=3")),
    Case("set-empty-key-part", ["--set train..steps=3", "empty part"], args=_sets("train..steps=3")),
    Case("set-index-out-of-range", ["--set data.corpora.5.kind=text", "data.corpora is a list of 1"],
         args=_sets("data.corpora.5.kind=text")),
    Case("set-index-not-a-number", ["--set data.corpora.x.kind=text", "expected an index 0..0"],
         args=_sets("data.corpora.x.kind=text")),
    Case("set-unknown-key", ["--set train.stpes=3", "unknown config key `train.stpes`", "did you mean `train.steps`?"],
         args=_sets("train.stpes=3")),
    Case("set-bad-value", ["--set train.steps=abc", "bad value for `train.steps`", "valid integer", "'abc'"],
         args=_sets("train.steps=abc")),
    Case("set-under-a-value", ["--set train.steps.deep=3", "`train.steps`"], args=_sets("train.steps.deep=3")),
    Case("set-out-of-range", ["--set checkpoint.keep=0", "`checkpoint.keep`"], args=_sets("train.seed=1", "checkpoint.keep=0")),
    Case("set-cross-field", ["--set model.num_heads=3", "model.hidden_size 64", "model.num_heads 3"],
         args=_sets("train.seed=1", "model.num_heads=3")),
    Case("set-seq-len-past-positions", ["--set data.seq_len=100", "data.seq_len 100 exceeds model.max_positions 64"],
         args=_sets("data.seq_len=100")),
    # the --set mistakes test_errors.py once ran as subprocesses, on configs/tiny.yaml as there
    Case("set-unknown-model-key", ["`model.hidden_sise`", "did you mean `model.hidden_size`?"],
         setup=_tiny, args=_sets("model.hidden_sise=32")),
    Case("set-unknown-section", ["unknown config key `trian`", "did you mean `train`?"], setup=_tiny, args=_sets("trian.steps=3")),
    Case("set-unknown-key-in-list", ["`data.corpora.0.kindd`", "did you mean `data.corpora.0.kind`?"],
         setup=_tiny, args=_sets("data.corpora=[{language: a, kindd: text}]")),
    Case("set-int-got-float", ["bad value for `train.batch_size`", "valid integer", "8.5"],
         setup=_tiny, args=_sets("train.batch_size=8.5")),
    Case("set-float-got-str", ["bad value for `train.optimizer.lr`", "valid number", "'fast'"],
         setup=_tiny, args=_sets("train.optimizer.lr=fast")),
    Case("set-literal", ["bad value for `model.norm`", "'post' or 'pre'", "'middle'"], setup=_tiny, args=_sets("model.norm=middle")),
    # --- keys that must agree -----------------------------------------------------------------------------
    Case("hidden-not-divisible", ["bad.yaml", "model.hidden_size 64", "model.num_heads 3"], {"model": {"num_heads": 3}}),
    Case("seq-len-past-positions", ["bad.yaml", "data.seq_len 65", "model.max_positions 64"], {"data": {"seq_len": 65}}),
    Case("task-seq-len-past-positions", ["task.seq_len 100", "model.max_positions 64"], deep_merge(TASK, {"task": {"seq_len": 100}})),
    Case("analysis-seq-len-past-positions", ["analysis.seq_len 100"], {"analysis": {"seq_len": 100}}),
    Case("batch-not-divisible-by-accum", ["train.batch_size 6", "train.grad_accum 4"], {"train": {"batch_size": 6, "grad_accum": 4}}),
    Case("mesh-two-minus-ones", ["mesh", "more than one -1"], {"mesh": {"data": -1, "fsdp": -1}}),
    Case("mesh-axis-0", ["mesh.tensor is 0"], {"mesh": {"tensor": 0}}),
    Case("mesh-rule-unknown-axis", ["mesh.rules.vocab", "'tensr'"], {"mesh": {"rules": {"vocab": ["tensr"]}}}),
    Case("forgetting-stop-before-start", ["forgetting.stop 5", "forgetting.start 10"],
         {"forgetting": {"every": 2, "start": 10, "stop": 5}}),
    Case("forgetting-on-without-groups", ["forgetting.groups is empty"], {"forgetting": {"every": 2, "groups": []}}),
    Case("separate-one-language", ["model.separate", "at least two languages"], {"model": {"separate": {"embeddings": True}}}),
    Case("separate-layers-past-num-layers", ["model.separate.layers is 5"],
         deep_merge(SEPARATE, {"model": {"separate": {"layers": 5}}})),
    Case("num-languages-vs-languages", ["model.num_languages 3", "2 model.languages"],
         {"model": {"num_languages": 3, "languages": ["syn", "xx"]}}),
    Case("masking-shares-above-1", ["data.mask_token_prob 0.9", "data.random_token_prob 0.2"],
         {"data": {"mask_token_prob": 0.9, "random_token_prob": 0.2}}),
    Case("text-corpus-without-path", ["`data.corpora.0`", "needs `path`"], {"data": {"corpora": [{"language": "syn"}]}}),
    Case("map-embeddings-without-run", ["init.map_embeddings", "from_run"], {"init": {"map_embeddings": {"dictionaries": ["d.txt"]}}}),
    Case("task-hf-without-name", ["task.hf", "`name`"], deep_merge(TASK, {"task": {"train": None, "hf": {"split": "train"}}})),
    Case("task-hf-unknown-key", ["task.hf", "splt"], deep_merge(TASK, {"task": {"train": None, "hf": {"name": "x", "splt": "t"}}})),
    Case("name-with-slash", ["name 'a/b'", "without /"], {"name": "a/b"}),
    # --- pipeline: stage partials and sweep -------------------------------------------------------------
    Case("pipeline-language-adapt-typo", ["unknown config key `pipeline.language_adapt.train.stpes`",
                                          "did you mean `pipeline.language_adapt.train.steps`?"],
         {"pipeline": {"language_adapt": {"train": {"stpes": 300}}}}, pipeline=True),
    Case("pipeline-task-adapt-range", ["`pipeline.task_adapt.train.steps`", "-1"],
         {"pipeline": {"task_adapt": {"train": {"steps": -1}}}}, pipeline=True),
    Case("pipeline-pretrain-unknown-section", ["`pipeline.pretrain.optimizer`"],
         {"pipeline": {"pretrain": {"optimizer": {"lr": 1e-3}}}}, pipeline=True),
    Case("pipeline-model-partial-typo", ["`pipeline.models.forgetting.forgettting`"],
         {"pipeline": {"models": {"forgetting": {"forgettting": {"every": 400}}}}}, pipeline=True),
    Case("pipeline-model-architecture", ["pipeline.models.forgetting", "model.hidden_size 63"],
         {"pipeline": {"models": {"forgetting": {"model": {"hidden_size": 63}}}}}, pipeline=True),
    Case("pipeline-stage-groups", ["language_adapt", "init.reinit", "`tokn`"],
         {"pipeline": {"language_adapt": {"init": {"reinit": ["tokn"]}}}}, pipeline=True),
    Case("pipeline-stage-seq-len", ["language_adapt", "data.seq_len 1000 exceeds"],
         {"pipeline": {"language_adapt": {"data": {"seq_len": 1000}}}}, pipeline=True),
    Case("pipeline-stage-mlm-steps-0", ["pretrain", "train.steps is 0"],
         {"pipeline": {"pretrain": {"train": {"steps": 0}}}}, pipeline=True),
    Case("pipeline-pretrained-unknown-model", ["pipeline.pretrained", "nomodel"],
         {"pipeline": {"pretrained": {"nomodel": "/x"}}}, pipeline=True),
    Case("pipeline-pretrained-placeholder", ["pipeline.pretrained.standard", "`{seed}` as the only placeholder"],
         {"pipeline": {"pretrained": {"standard": "runs/x/pretrain/standard-s{sed}"}}}, pipeline=True),
    Case("pipeline-target-without-test", ["task.test", "zz"],
         {"pipeline": {"targets": [{"language": "zz", "corpus": {"language": "zz", "kind": "synthetic"}}]}}, pipeline=True),
    Case("pipeline-oracle-without-dictionary", ["zz", "no dictionary"],
         {"task": {"test": {"zz": "zz.tsv"}}, "pipeline": {"embeddings": ["oracle"], "targets": [
             {"language": "zz", "corpus": {"language": "zz", "kind": "synthetic"}}]}}, pipeline=True),
    Case("pipeline-duplicate-seeds", ["pipeline.seeds", "more than once"], {"pipeline": {"seeds": [0, 0]}}, pipeline=True),
    Case("pipeline-no-models", ["pipeline.models is empty"], {"pipeline": {"models": {"_replace": True}}}, pipeline=True),
    Case("pipeline-model-name-path", ["pipeline.models", "'a/b'"], {"pipeline": {"models": {"a/b": {}}}}, pipeline=True),
    Case("pipeline-without-task", ["pipeline needs a `task:` section"], {"task": None}, pipeline=True),
]

assert len({c.id for c in CASES}) == len(CASES) >= 60


@pytest.fixture(autouse=True)
def _no_launcher_env(monkeypatch):
    for var in ("XLPLASTIC_COORDINATOR", "XLPLASTIC_NUM_PROCESSES", "XLPLASTIC_PROCESS_ID", "XLPLASTIC_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)


def test_the_base_configs_are_valid(tmp_path):
    """Each case's one change is what breaks it: BASE and the quickstart pipeline load and pass the sweep check."""
    from xlplastic.stages import check_pipeline

    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(BASE))
    load_config(path)
    load_config(path, ["train.seed=1"])
    path.write_text(yaml.safe_dump(deep_merge(BASE, TASK)))
    assert load_config(path).task.name == "classification"  # an unnamed task is named by its kind
    path.write_text(yaml.safe_dump(deep_merge(BASE, SEPARATE)))
    load_config(path)
    # quickstart: 2 models x (pretrain, task_adapt, oracle, 3 draws x (language_adapt, evaluate))
    assert check_pipeline(load_config(QUICKSTART), tmp_path / "run") == 18
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, capsys):
    config = case.write(tmp_path)
    run_dir = tmp_path / "run"
    code = cli.main(["run", str(config), "--run-dir", str(run_dir), *case.args])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, f"exit {code}; stderr:\n{err}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("xlplastic: error: "), lines[0]
    for needle in case.needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert not run_dir.exists() or not any(run_dir.iterdir()), f"the run dir has {sorted(run_dir.iterdir())}"
