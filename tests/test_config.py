"""Config schema: inheritance, overrides, presets and one-line errors."""

import subprocess
import sys

import pytest

from xlplastic.config import apply_overrides, dump_config, load_config, load_raw, validate, yaml_load
from xlplastic.errors import UserError


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\ntrain: {steps: 10, batch_size: 16}\nmodel: {preset: tiny}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\ntrain: {steps: 20}\n")
    cfg = load_config(tmp_path / "b.yaml", ["train.seed=7", "train.optimizer.lr=1e-4", "mesh.rules.vocab=[]"])
    assert (cfg.name, cfg.train.steps, cfg.train.batch_size, cfg.train.seed) == ("b", 20, 16, 7)
    assert cfg.train.optimizer.lr == 1e-4 and cfg.mesh.rules["vocab"] == []
    assert cfg.model.hidden_size == 64  # preset
    # the resolved config round-trips
    (tmp_path / "resolved.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_yaml_floats_and_interface_keys():
    assert yaml_load("x: 1e-4")["x"] == 1e-4
    cfg = validate(apply_overrides({}, ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "train.steps=5",
                                        "train.seed=3", "train.batch_size=8", "checkpoint.every=2"]))
    assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, cfg.train.steps, cfg.checkpoint.every) == (2, 2, 2, 5, 2)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"train": {"stepz": 3}}, "unknown config key `train.stepz`; did you mean `train.steps`?"),
        ({"modle": {}}, "unknown config key `modle`; did you mean `model`?"),
        ({"train": {"steps": "many"}}, "bad value for `train.steps`"),
        ({"model": {"norm": "middle"}}, "bad value for `model.norm`"),
        ({"model": {"hidden_size": 100, "num_heads": 3}}, "model.hidden_size 100 must be divisible by model.num_heads 3"),
        ({"train": {"batch_size": 10, "grad_accum": 4}}, "divisible by train.grad_accum"),
    ],
)
def test_errors_name_the_key(raw, expected):
    with pytest.raises(UserError) as e:
        validate(raw, "exp.yaml")
    msg = str(e.value)
    assert expected in msg and msg.startswith("exp.yaml") and "\n" not in msg


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_raw(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: {steps: [1,\n")
    with pytest.raises(UserError, match="malformed YAML"):
        load_raw(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="expected a mapping"):
        load_raw(tmp_path / "list.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(UserError, match="loops"):
        load_raw(tmp_path / "loop.yaml")
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_overrides({}, ["train.steps"])


def test_shipped_configs_load(root):
    for name in ("tiny", "quickstart", "roberta_base", "xlmr_base"):
        cfg = load_config(root / "configs" / f"{name}.yaml")
        assert cfg.train.steps > 0
    base = load_config(root / "configs/roberta_base.yaml")
    assert (base.model.hidden_size, base.model.num_layers, base.model.num_heads, base.model.mlp_dim) == (768, 12, 12, 3072)


def test_every_key_is_documented(root):
    """docs/config.md names every schema key, so the reference cannot silently fall behind."""
    from pydantic import BaseModel

    from xlplastic.config import Config

    doc = (root / "docs/config.md").read_text()

    def keys(model):
        for name, field in model.model_fields.items():
            yield name
            ann = field.annotation
            for a in (ann, *getattr(ann, "__args__", ())):
                if isinstance(a, type) and issubclass(a, BaseModel):
                    yield from keys(a)

    missing = sorted({k for k in keys(Config) if f"`{k}`" not in doc and f"`{k.split('.')[-1]}`" not in doc})
    assert not missing, f"undocumented config keys: {missing}"


def test_overrides_index_lists():
    """`--set lab.languages.1.word_order=reverse` edits one element; a bad index is one clear error."""
    from xlplastic.config import apply_overrides

    raw = {"lab": {"languages": [{"name": "syn"}, {"name": "syn_perm", "permute": 1.0}]}}
    out = apply_overrides(raw, ["lab.languages.1.word_order=reverse", "lab.seed=7"])
    assert out["lab"]["languages"] == [{"name": "syn"}, {"name": "syn_perm", "permute": 1.0, "word_order": "reverse"}]
    assert out["lab"]["seed"] == 7 and raw["lab"]["languages"][1] == {"name": "syn_perm", "permute": 1.0}
    with pytest.raises(UserError, match=r"lab.languages is a list of 2; expected an index 0..1 where '2' is"):
        apply_overrides(raw, ["lab.languages.2.word_order=reverse"])


def test_loading_a_config_imports_no_jax(root):
    code = ("import sys; from xlplastic.config import load_config; load_config('configs/quickstart.yaml'); "
            "assert 'jax' not in sys.modules, 'jax imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("model", [
    {},
    {"num_languages": 2, "type_vocab_size": 2, "norm": "pre"},
    {"languages": ["a", "b"], "separate": {"embeddings": True, "layers": 1}},
    {"languages": ["a", "b"], "separate": {"positions": True}, "num_layers": 1},
    {"languages": ["a", "b"], "separate": {"layers": 2}, "num_layers": 2},  # no shared layer left: body@a, body@b
], ids=["plain", "languages-types-pre", "sep-emb-l1", "sep-positions", "sep-all-layers"])
def test_model_groups_are_the_labels_of_the_built_model(model):
    """groups.model_groups (what configs are checked against, no model built) = the labels of a real model."""
    import jax
    from flax import nnx

    from xlplastic import model as model_lib
    from xlplastic.groups import base_group, label_params, model_groups

    cfg = validate({"model": {"hidden_size": 16, "num_heads": 2, "mlp_dim": 32, "num_layers": 2,
                              "max_positions": 16, **model}}).model
    params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: model_lib.create(cfg, 30, seed=0)), nnx.Param))
    labels = set(jax.tree.leaves(label_params(params)))
    assert set(model_groups(cfg)) == labels | {base_group(l) for l in labels}
    assert "task_head" in model_groups(cfg, task=True) and "task_head" not in model_groups(cfg)


@pytest.mark.parametrize("raw, expected", [
    ({"init": {"reinit": ["token_embeding"]}}, "init.reinit names unknown parameter group `token_embeding`"),
    ({"init": {"reinit": ["language_embedding"]}}, "init.reinit names parameter group `language_embedding`, but"),
    ({"init": {"from_run": "r", "groups_from": {"task_head": "t"}}}, "a masked-LM run has no task head"),
    ({"train": {"trainable": ["body@fr"]}}, "unknown parameter group `body@fr`"),
    ({"forgetting": {"groups": ["embedings"]}}, "forgetting.groups names unknown parameter group `embedings`"),
    ({"forgetting": {"every": 5, "groups": ["language_embedding"]}}, "forgetting.groups names parameter group"),
])
def test_group_names_are_checked_against_the_model(raw, expected):
    with pytest.raises(UserError) as e:
        validate(raw, "exp.yaml")
    assert expected in str(e.value) and "expected some of token_embedding" in str(e.value)


def test_group_names_valid_for_the_model():
    sep = {"languages": ["en", "fr"], "separate": {"embeddings": True}}
    cfg = validate({"model": sep, "init": {"reinit": ["token_embedding@fr", "position_embedding"]},
                    "train": {"trainable": ["token_embedding@fr"]}})
    assert cfg.init.reinit == ["token_embedding@fr", "position_embedding"]
    # a task run's default list names language_embedding whether or not the model has one
    task = validate({"task": {"kind": "pos"}, "train": {"trainable": ["language_embedding", "body", "task_head"]}})
    assert task.train.trainable[-1] == "task_head"
    validate({"forgetting": {"every": 0, "groups": ["task_head"]}})  # off: only misspellings are errors


def test_task_name_defaults_to_its_kind():
    assert validate({"task": {"kind": "pos"}}).task.name == "pos"
    assert validate({"task": {}}).task.name == "classification"
    assert validate({"task": {"kind": "ner", "name": None}}).task.name == "ner"
    assert validate({"task": {"kind": "ner", "name": "wikiann"}}).task.name == "wikiann"


def test_remat_attention_is_not_an_option():
    with pytest.raises(UserError, match="expected 'none', 'block' or 'dots'"):
        validate({"model": {"remat": "attention"}})


def test_run_checks_only_with_run():
    """validate() of a model-only config (tests, tools) leaves out what only a run needs; load_config has it."""
    raw = {"model": {"max_positions": 32}, "data": {"seq_len": 64}}
    validate(raw)
    with pytest.raises(UserError, match="data.seq_len 64 exceeds model.max_positions 32"):
        validate(raw, run=True)
    with pytest.raises(UserError, match="train.steps is 0"):
        validate({"train": {"steps": 0}}, run=True)
    validate({"task": {}, "train": {"steps": 0}, "init": {"from_run": "r"}}, run=True)  # a task run: evaluate only


def test_empty_and_folder_configs(tmp_path):
    (tmp_path / "empty.yaml").write_text("# only a comment\n")
    with pytest.raises(UserError, match="empty.yaml: empty config file"):
        load_config(tmp_path / "empty.yaml")
    with pytest.raises(UserError, match="is a folder"):
        load_config(tmp_path)
    (tmp_path / "dup.yaml").write_text("train: {steps: 3}\ntrain: {seed: 1}\n")
    with pytest.raises(UserError, match=r"dup.yaml:2: malformed YAML \(duplicate key `train`"):
        load_config(tmp_path / "dup.yaml")


def test_set_errors_name_the_override_not_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("model: {preset: tiny, max_positions: 64}\ndata: {seq_len: 32}\n")
    with pytest.raises(UserError, match=r"^--set train.steps=-2: bad value for `train.steps`: got -2"):
        load_config(tmp_path / "c.yaml", ["train.seed=1", "train.steps=-2"])
    # a check over several keys names the override that breaks it...
    with pytest.raises(UserError, match=r"^--set data.seq_len=100: data.seq_len 100 exceeds"):
        load_config(tmp_path / "c.yaml", ["train.seed=1", "data.seq_len=100", "train.steps=3"])
    with pytest.raises(UserError, match=r"^--set model.num_heads=3: model.hidden_size 64"):
        load_config(tmp_path / "c.yaml", ["model.num_heads=3"])
    # ...and the file when the file alone breaks it
    (tmp_path / "c.yaml").write_text("model: {preset: tiny, max_positions: 16}\ndata: {seq_len: 32}\n")
    with pytest.raises(UserError, match=r"c.yaml: data.seq_len 32 exceeds"):
        load_config(tmp_path / "c.yaml", ["train.seed=1"])
    assert load_config(tmp_path / "c.yaml", ["data.seq_len=16"]).data.seq_len == 16  # an override may fix the file


def test_stage_partials_are_named_in_errors():
    from xlplastic.config import validate_partials

    base = validate({}).model_dump(mode="json")
    with pytest.raises(UserError, match=r"^stage x: unknown config key `pipeline.language_adapt.train.stpes`; "
                                        r"did you mean `pipeline.language_adapt.train.steps`\?"):
        validate_partials(base, {"train": {"seed": 1}}, ("pipeline.language_adapt", {"train": {"stpes": 3}}),
                          source="stage x")
    with pytest.raises(UserError, match=r"bad value for `pipeline.models.m.data.corpora.0.kind`"):
        validate_partials(base, ("pipeline.models.m", {"data": {"corpora": [{"kind": "txt"}]}}), source="s")
    with pytest.raises(UserError, match=r"^s: bad value for `train.steps`"):  # set by an unlabelled partial
        validate_partials(base, ("pipeline.task_adapt", {"train": {"steps": 3}}), {"train": {"steps": -3}}, source="s")


def test_replace_merges_and_is_dropped(tmp_path):
    (tmp_path / "a.yaml").write_text("pipeline: {models: {x: {}, y: {}}}\ntask: {}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\npipeline: {models: {_replace: true, z: {}}}\n")
    assert list(load_config(tmp_path / "b.yaml").pipeline.models) == ["z"]
    (tmp_path / "c.yaml").write_text("pipeline: {models: {_replace: true, z: {}}}\ntask: {}\n")  # nothing to replace
    assert list(load_config(tmp_path / "c.yaml").pipeline.models) == ["z"]
