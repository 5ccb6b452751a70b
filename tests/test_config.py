"""Config schema: inheritance, overrides, presets and one-line errors."""

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
        ({"model": {"hidden_size": 100, "num_heads": 3}}, "divisible by num_heads"),
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
