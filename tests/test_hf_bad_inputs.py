"""Bad Hugging Face folders, each through the CLI in this process: one stderr line `xlplastic: error: ...`
naming the problem, exit 2, and nothing written (the output folder is not created)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch", reason="the tiny HF models are made with the [torch] extra")
pytest.importorskip("transformers", reason="the tiny HF models are made with the [torch] extra")

from hf_helpers import tiny_hf, write_tokenizer  # noqa: E402
from xlplastic import cli  # noqa: E402


class NotATensor:
    """Anything torch.load(weights_only=True) must refuse to unpickle."""


def _gpt2(d: Path) -> None:
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                               "n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 96}))


def _missing_weights(d: Path) -> None:
    tiny_hf(d, "roberta")
    (d / "model.safetensors").unlink()


def _truncated(d: Path) -> None:
    tiny_hf(d, "roberta")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _shape_vs_config(d: Path) -> None:
    tiny_hf(d, "bert")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 80  # the file's FFN is 64 wide
    (d / "config.json").write_text(json.dumps(cfg))


def _vocab_vs_tokenizer(d: Path) -> None:
    tiny_hf(d, "roberta", vocab=96)
    write_tokenizer(d, "roberta", 110)  # more tokens than embedding rows


def _pickle_bin(d: Path) -> None:
    model = tiny_hf(d, "roberta")
    (d / "model.safetensors").unlink()
    torch.save({**model.state_dict(), "extra": NotATensor()}, d / "pytorch_model.bin")


def _unknown_tensor(d: Path) -> None:
    from safetensors.torch import save_file

    model = tiny_hf(d, "roberta")
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    sd["classifier.dense.weight"] = torch.zeros(3, 32)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})


def _untied_decoder(d: Path) -> None:
    from safetensors.torch import save_file

    model = tiny_hf(d, "roberta")
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    sd["lm_head.decoder.weight"] = torch.randn(96, 32)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})


def _missing_shard(d: Path) -> None:
    tiny_hf(d, "roberta", max_shard_size="20KB")
    next(iter(sorted(d.glob("model-*.safetensors")))).unlink()


CASES = [
    ("gpt2", _gpt2, ["config.json", "model_type 'gpt2' (GPT2LMHeadModel) is not supported", "RobertaForMaskedLM"]),
    ("missing_weights", _missing_weights, ["no weights file", "model.safetensors"]),
    ("truncated", _truncated, ["model.safetensors", "truncated"]),
    ("shape_vs_config", _shape_vs_config, ["intermediate.dense.weight", "[64, 32]", "config.json gives [80, 32]"]),
    ("vocab_vs_tokenizer", _vocab_vs_tokenizer, ["110 tokens", "96 rows", "vocabulary/tokenizer mismatch"]),
    ("pickle_bin", _pickle_bin, ["pytorch_model.bin", "weights_only=True", "never unpickles"]),
    ("unknown_tensor", _unknown_tensor, ["classifier.dense.weight", "not part of a roberta encoder"]),
    ("untied_decoder", _untied_decoder, ["lm_head.decoder.weight", "untied"]),
    ("missing_shard", _missing_shard, ["model.safetensors.index.json", "missing"]),
]


def _one_line(rc: int, capsys, needles) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("xlplastic: error: "), err[-3000:]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("name,make,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_hf_folder_is_one_line(name, make, needles, tmp_path, capsys):
    d = tmp_path / "hf"
    make(d)
    capsys.readouterr()  # (what making the folder printed)
    out = tmp_path / "out"
    rc = cli.main(["analyze", f"hf:{d}", "--run-dir", str(out), "--set", "analysis.parallel=p.tsv"])
    _one_line(rc, capsys, needles)
    assert not out.exists()


@pytest.mark.parametrize("name,make,needles", [CASES[0], CASES[4]], ids=["gpt2", "vocab_vs_tokenizer"])
def test_bad_hf_folder_in_a_run_config(name, make, needles, tmp_path, capsys):
    """`init.from_hf` of a bad folder: the same line from `xlplastic run`, and no run folder left behind."""
    d = tmp_path / "hf"
    make(d)
    capsys.readouterr()
    (tmp_path / "text.txt").write_text("w5 w6 w7\n" * 20)
    cfg = {"name": "bad", "init": {"from_hf": str(d)},
           "data": {"corpora": [{"language": "xx", "kind": "text", "path": str(tmp_path / "text.txt")}], "seq_len": 16},
           "train": {"steps": 1, "batch_size": 8, "progress": False}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    rc = cli.main(["run", str(tmp_path / "bad.yaml"), "--run-dir", str(tmp_path / "run")])
    _one_line(rc, capsys, needles[:1] if name == "gpt2" else ["vocab_size 96", "vocabulary 110"])
    assert not (tmp_path / "run").exists()


def test_from_hf_and_from_run_together_is_a_config_error(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"init": {"from_hf": "x", "from_run": "y"}}))
    rc = cli.main(["run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run")])
    _one_line(rc, capsys, ["init.from_hf and init.from_run"])
    assert not (tmp_path / "run").exists()
