"""Word tagging: POS (UPOS from CoNLL-U) and NER (BIO tags); one label per word, on its first subword.

Arrays: tokens [N, T], word_index [N, W], word_mask [N, W] (see features.encode_words), labels [N, W]
tag ids (-1: not in the label map). The two kinds share all but their reader and their score.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from xlplastic.config import ModelConfig
from xlplastic.model import dropout
from xlplastic.tasks import formats, metrics
from xlplastic.tasks.encoding import Features, encode_words, word_array, word_predictions
from xlplastic.tasks.layers import Dense, f32, gather, masked_sums, nll, param_dtype
from xlplastic.tasks.task import Task


def encode(examples, tokenizer, specials, seq_len, label_map, **_) -> Features:
    f = encode_words(examples, tokenizer, specials, seq_len)
    f.arrays["labels"] = word_array([[label_map.get(t, -1) for t in e.tags] for e in examples], f)
    return f


class TaggingHead(nnx.Module):
    """Dropout + linear D->labels on each word's first-subword state (POS and NER)."""

    def __init__(self, cfg: ModelConfig, n: int, rngs: nnx.Rngs):
        self.rate = cfg.dropout
        self.out = Dense(rngs, cfg.hidden_size, n, ("embed", "labels"), cfg.init_std, param_dtype(cfg))

    def __call__(self, h_BxTxD, batch, key):
        x = gather(h_BxTxD, batch["word_index"]).astype(f32)
        return self.out(dropout(x, self.rate, key))  # [B, W, L]


def new_head(cfg: ModelConfig, n: int, rngs: nnx.Rngs, pooling: str = "bos") -> TaggingHead:
    return TaggingHead(cfg, n, rngs)  # words are never pooled


def loss(head, h_BxTxD, batch, dropout_key):
    """Cross-entropy per real word; correct = argmax tag right."""
    logits, gold = head(h_BxTxD, batch, dropout_key), batch["labels"]
    return masked_sums(nll(logits, gold), batch["word_mask"] * (gold >= 0), logits.argmax(-1) == gold)


def predict(head, h_BxTxD, batch) -> dict[str, jax.Array]:
    """labels [B, W]: the argmax tag id per word."""
    return {"labels": head(h_BxTxD, batch, None).argmax(-1).astype(jnp.int32)}


def _tags(predictions, features, label_map) -> list[list[str | None]]:
    """Predicted tag names over all words; truncated words get None (always wrong)."""
    inv = {v: k for k, v in label_map.items()}
    return [[inv.get(int(p)) for p in s] for s in word_predictions(predictions["labels"], features, -1)]


def pos_score(predictions, features, examples, label_map, **_) -> dict[str, float]:
    gold = [list(e.tags) for e in examples]
    return {"accuracy": metrics.token_accuracy(_tags(predictions, features, label_map), gold)}


def ner_score(predictions, features, examples, label_map, **_) -> dict[str, float]:
    """Token accuracy and conlleval span F1; a truncated word counts as "O", so its entity is missed."""
    gold, pred = [list(e.tags) for e in examples], _tags(predictions, features, label_map)
    spans = metrics.span_f1([[p or "O" for p in s] for s in pred], gold)
    return {"accuracy": metrics.token_accuracy(pred, gold), **spans}


def _read_pos(path, *, language=None, max_examples=None):
    return formats.read_pos(path, max_sentences=max_examples)


def _read_ner(path, *, language=None, max_examples=None):
    return formats.read_bio(path, max_sentences=max_examples)


_SHARED = dict(encode=encode, new_head=new_head, loss=loss, predict=predict)
POS = Task(kind="pos", headline_metric="accuracy", file_format="a CoNLL-U file", read_file=_read_pos,
           read_hf_row=formats.pos_from_hf, score=pos_score, **_SHARED)
NER = Task(kind="ner", headline_metric="f1", file_format="a BIO-tagged NER file", read_file=_read_ner,
           read_hf_row=formats.ner_from_hf, score=ner_score, **_SHARED)
