"""Heads and the RoBERTa / XLM-R / BERT conventions: tiny random ...ForMaskedLM models made here with
transformers and saved with `save_pretrained` (once sharded with an index) give the same MLM logits
(1e-4) at every position, padded rows included, on a sharded mesh; base models without the prefix get
a fresh head; what is skipped (pooler, buffers, the tied decoder) is named in one line."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs the [torch] extra")
transformers = pytest.importorskip("transformers", reason="the HF reference needs the [torch] extra")

from hf_helpers import padded_batch, random_rows, tiny_hf  # noqa: E402
from xlplastic.config import MeshConfig  # noqa: E402
from xlplastic.hf import load_hf  # noqa: E402

MESH = MeshConfig(data=1, fsdp=2, tensor=2)
SPECIALS = {"bert": (2, 3, 0), "roberta": (0, 2, 1), "xlm-roberta": (0, 2, 1)}  # bos, eos, pad


def _batch(kind: str, vocab: int, seed: int = 0):
    bos, eos, pad = SPECIALS[kind]
    rows = random_rows(np.random.default_rng(seed), 4, 5, vocab, 3, 38, bos, eos)  # 38 = 40 positions - offset 2
    return padded_batch(rows, pad)


@pytest.mark.parametrize("kind,shard", [("roberta", None), ("xlm-roberta", "20KB"), ("bert", None)])
def test_mlm_logits_match_hf(kind, shard, tmp_path):
    ref = tiny_hf(tmp_path, kind, max_shard_size=shard)
    if shard:
        assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    lines: list[str] = []
    m = load_hf(tmp_path, MESH, devices=jax.devices()[:4], log=lines.append)
    c = m.config.model
    # RoBERTa/XLM-R: positions from padding_idx + 1 (40 rows for 38 tokens), one token type, eps 1e-5; BERT: none of it
    assert (c.position_offset, c.type_vocab_size) == ((0, 2) if kind == "bert" else (2, 1))
    assert c.layer_norm_eps == (1e-12 if kind == "bert" else 1e-5) and m.has_mlm_head
    assert c.max_positions == 40 and m.params["position_embed"].shape == (40, 32)
    ids, mask = _batch(kind, 96)
    assert ids.shape[1] == 38  # the longest row: all of RoBERTa's positions
    got = m.mlm_logits(ids, mask)
    with torch.no_grad():
        want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    diff = np.abs(got - want)
    assert diff.max() <= 1e-4, f"{kind}: max abs diff {diff.max():.2e} (padded positions included)"
    assert (mask == 0).any()  # padded rows are in the comparison
    if shard:
        assert any("6 shards" in l or "shards (model.safetensors.index.json)" in l for l in lines), lines


def test_pad_positions_read_the_padding_row(tmp_path):
    """RoBERTa: a pad token takes position row padding_idx, real token i row padding_idx + 1 + i."""
    tiny_hf(tmp_path, "roberta")
    m = load_hf(tmp_path, MeshConfig(data=1), devices=jax.devices()[:1], log=lambda s: None)
    P = np.asarray(m.params["position_embed"])
    enc = m.merge(m.params)
    import jax.numpy as jnp

    tok = jnp.asarray([[0, 7, 2, 1, 1]])
    h, hs = enc.encode(tok, jnp.asarray([3]), return_hidden=True)
    E = np.asarray(m.params["token_embed"])[np.asarray(tok[0])] + P[[2, 3, 4, 1, 1]] + np.asarray(m.params["type_embed"])[0]
    mu, var = E.mean(-1, keepdims=True), E.var(-1, keepdims=True)
    n = m.params["embed_norm"]
    want = (E - mu) / np.sqrt(var + 1e-5) * np.asarray(n["scale"]) + np.asarray(n["bias"])
    np.testing.assert_allclose(np.asarray(hs[0][0]), want, atol=1e-5)


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_base_model_without_prefix_gets_a_fresh_head(kind, tmp_path):
    ref = tiny_hf(tmp_path, kind, head=False)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
        assert all(not k.startswith(("roberta.", "bert.")) for k in f.keys())  # a base model's keys: no prefix
    lines: list[str] = []
    m = load_hf(tmp_path, MESH, devices=jax.devices()[:4], log=lines.append)
    assert not m.has_mlm_head
    fresh = [l for l in lines if "no masked-LM head" in l]
    assert len(fresh) == 1 and "a fresh one is drawn" in fresh[0]
    ids, mask = _batch(kind, 96, seed=1)
    got = m.hidden_states(ids, mask)
    with torch.no_grad():
        out = ref(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    want = np.stack([h.numpy() for h in out.hidden_states])
    assert np.abs(got - want).max() <= 1e-4
    assert m.mlm_logits(ids, mask).shape == (*ids.shape, 96)


def test_skipped_tensors_named_in_one_line_and_bin_through_weights_only(tmp_path):
    """An old-style file (tied decoder saved, position_ids buffer, pooler) as pytorch_model.bin: read by
    torch.load(weights_only=True), every extra tensor named as skipped in one line, same logits."""
    ref = tiny_hf(tmp_path, "roberta")
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    sd["lm_head.decoder.weight"] = sd["roberta.embeddings.word_embeddings.weight"].clone()
    sd["lm_head.decoder.bias"] = sd["lm_head.bias"].clone()
    sd["roberta.embeddings.position_ids"] = torch.arange(40)[None]
    sd["roberta.pooler.dense.weight"] = torch.zeros(32, 32)
    sd["roberta.pooler.dense.bias"] = torch.zeros(32)
    (tmp_path / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    lines: list[str] = []
    m = load_hf(tmp_path, MESH, devices=jax.devices()[:4], log=lines.append)
    skipped = [l for l in lines if l.startswith("hf: skipped")]
    assert len(skipped) == 1, lines
    for name in ("lm_head.decoder.weight", "lm_head.decoder.bias", "roberta.embeddings.position_ids",
                 "roberta.pooler.dense.weight", "pooler, not part"):
        assert name in skipped[0], skipped[0]
    ids, mask = _batch("roberta", 96, seed=2)
    with torch.no_grad():
        want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert np.abs(m.mlm_logits(ids, mask) - want).max() <= 1e-4


def test_padded_vocabulary_and_undivided_dimension_are_said(tmp_path):
    """Embedding rows >= tokenizer size is allowed and said; a vocabulary of 97 rows on tensor=2 keeps
    the embeddings whole along `tensor`, in one line naming the tensor, its shape and the mesh axis."""
    tiny_hf(tmp_path, "roberta", vocab=97, tokens=90)
    lines: list[str] = []
    m = load_hf(tmp_path, MeshConfig(data=1, fsdp=1, tensor=2), devices=jax.devices()[:2], log=lines.append)
    assert m.tokenizer.get_vocab_size() == 90 and m.params["token_embed"].shape == (97, 32)
    assert any("97 rows for 90 tokenizer tokens" in l for l in lines), lines
    undivided = [l for l in lines if "roberta.embeddings.word_embeddings.weight" in l and "not divisible" in l]
    assert len(undivided) == 1 and "[97, 32]" in undivided[0] and "mesh axis tensor (2)" in undivided[0], lines
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == 97
