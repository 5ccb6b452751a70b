"""Export and the round trip: an xlplastic run -> `xlplastic export RUN --hf DIR` ->
`AutoModelForMaskedLM.from_pretrained` (no missing or unexpected keys, the same logits) -> imported again
-> bit-identical parameters; an HF model imported and exported again gives back its own tensors; models
HF cannot hold are refused with one line before anything is written."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

torch = pytest.importorskip("torch", reason="the PyTorch reference needs the [torch] extra")
transformers = pytest.importorskip("transformers", reason="the HF reference needs the [torch] extra")

from hf_helpers import tiny_hf  # noqa: E402
from xlplastic import cli  # noqa: E402
from xlplastic.analysis import reps  # noqa: E402
from xlplastic.config import MeshConfig, validate  # noqa: E402
from xlplastic.errors import UserError  # noqa: E402
from xlplastic.hf import load_hf  # noqa: E402
from xlplastic.hf_export import export  # noqa: E402
from xlplastic.run import run  # noqa: E402

RAW = {"name": "rt", "model": {"preset": "tiny", "max_positions": 40, "type_vocab_size": 1, "dropout": 0.0,
                               "attention_dropout": 0.0},
       "data": {"corpora": [{"language": "syn", "kind": "synthetic", "synthetic_sentences": 200, "synthetic_words": 60}],
                "tokenizer": {"kind": "bpe", "vocab_size": 120}, "seq_len": 32, "eval_sequences": 2},
       "train": {"steps": 3, "batch_size": 8, "progress": False, "eval_batches": 1},
       "mesh": {"data": 1, "fsdp": 4, "tensor": 2}}


def _flat(params) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_roundtrip")
    run(validate(RAW), d / "run")
    return d


def _rows(sp, V: int):
    rng = np.random.default_rng(0)
    ids = np.full((3, 32), sp.pad)
    mask = np.zeros((3, 32), np.int64)
    for i, L in enumerate((30, 9, 20)):  # the first row fills every position, the others are padded
        ids[i, : L + 2] = [sp.bos, *rng.integers(5, V, L), sp.eos]
        mask[i, : L + 2] = 1
    return ids, mask


@pytest.mark.parametrize("arch", ["roberta", "bert"])
def test_run_export_hf_import_round_trip(trained, arch, capsys):
    out = trained / f"hf_{arch}"
    assert cli.main(["export", str(trained / "run"), "--hf", str(out), "--arch", arch]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                "tokenizer_config.json", "special_tokens_map.json"}
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    assert type(hf).__name__ == ("RobertaForMaskedLM" if arch == "roberta" else "BertForMaskedLM")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    lm = reps.load_model(trained / "run")
    orig = _flat(lm.params)
    ids, mask = _rows(lm.specials, orig["token_embed"].shape[0])
    enc = lm.merge(lm.params)
    mine = np.asarray(enc.mlm_logits(enc.encode(jnp.asarray(ids), jnp.asarray(mask.sum(-1)))))
    with torch.no_grad():
        ref = hf.eval()(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    # real tokens everywhere; padded positions too for BERT (for RoBERTa HF gives pads the zero padding row)
    assert np.abs(mine - ref)[real].max() <= 1e-4
    if arch == "bert":
        assert np.abs(mine - ref).max() <= 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    enc_ids = tok("w")["input_ids"]
    assert enc_ids[0] == lm.specials.bos and enc_ids[-1] == lm.specials.eos and tok.pad_token_id == lm.specials.pad
    back = _flat(load_hf(out, MeshConfig(data=1, fsdp=4, tensor=2)).params)
    assert set(back) == set(orig)
    for k, a in orig.items():
        b = back[k]
        if k == "position_embed" and arch == "roberta":  # moved by padding_idx + 1 = 2 rows, zeros before
            assert np.array_equal(b[2:], a) and not b[:2].any(), k
        else:
            assert a.dtype == b.dtype and np.array_equal(a, b), k  # bit-identical


def test_hf_import_export_gives_back_the_same_tensors(tmp_path):
    """HF -> xlplastic -> HF: every tensor of the original file comes back bit for bit (sharded in between)."""
    from safetensors.numpy import load_file

    tiny_hf(tmp_path / "src", "xlm-roberta", vocab=100)
    assert cli.main(["export", f"hf:{tmp_path / 'src'}", "--hf", str(tmp_path / "out"), "--arch", "xlm-roberta"]) == 0
    a, b = load_file(str(tmp_path / "src" / "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(b) == set(a) - {"roberta.embeddings.position_ids"}
    for k in b:
        assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("over,needle", [({"num_languages": 2}, "language embeddings"),
                                         ({"languages": ["a", "b"], "separate": {"embeddings": True}}, "Sep"),
                                         ({"norm": "pre"}, "pre-LN")])
def test_export_refuses_what_hf_cannot_hold(over, needle, tmp_path):
    cfg = validate({"model": {"preset": "tiny", **over}})
    from tokenizers import Tokenizer, models

    with pytest.raises(UserError, match=needle) as e:
        export(cfg, {}, Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), None, tmp_path / "out")
    assert "\n" not in str(e.value) and "HF cannot hold" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_export_bad_run_is_one_line(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "nope"), "--hf", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run directory not found" in err[0]
    assert not (tmp_path / "out").exists()


def test_scanned_model_imports_and_exports_hf_bit_for_bit(tmp_path):
    """`init.from_hf` into a scanned model (model.scan_layers: the HF layers read slice by slice into the
    stack), trained with lr 0, exported again: every tensor of the original file comes back bit for bit."""
    from safetensors.numpy import load_file

    tiny_hf(tmp_path / "hf", "roberta", vocab=200, layers=3)
    words = " ".join(f"w{i}" for i in range(5, 200))
    (tmp_path / "text.txt").write_text("\n".join([words] * 40) + "\n")
    raw = {"name": "scan", "init": {"from_hf": str(tmp_path / "hf")}, "model": {"scan_layers": True},
           "data": {"corpora": [{"language": "xx", "kind": "text", "path": str(tmp_path / "text.txt")}],
                    "seq_len": 38, "eval_sequences": 2},
           "train": {"steps": 1, "batch_size": 4, "progress": False, "eval_batches": 1,
                     "optimizer": {"lr": 0.0, "weight_decay": 0.0}},
           "checkpoint": {"async_save": False}, "mesh": {"data": 1, "fsdp": 4, "tensor": 2}}
    run(validate(raw), tmp_path / "run")
    params = _flat(reps.load_model(tmp_path / "run").params)
    assert params["layers/mlp/in_kernel"].shape[0] == 3 and not any(k.startswith("layer_") for k in params)
    assert cli.main(["export", str(tmp_path / "run"), "--hf", str(tmp_path / "out"), "--arch", "roberta"]) == 0
    a, b = load_file(str(tmp_path / "hf" / "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(b) == set(a) - {"roberta.embeddings.position_ids"}
    for k in b:
        assert np.array_equal(a[k], b[k]), k
