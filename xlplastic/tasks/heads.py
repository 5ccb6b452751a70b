"""Task heads on the encoder's hidden states: `create_head`, `head_loss` and `head_predict` for any kind.

Why: fine-tuning adds one small module per task; the trainer treats them alike through `create_head`,
`head_loss` (jit-able sums, so batches and devices add up exactly) and `head_predict`, which look the
kind up in the task registry. Each kind's head lives in its module in tasks/kinds/, built from
tasks/layers.py; every parameter carries logical axes like the encoder's.

All heads take (h_BxTxD, batch, dropout_key or None) and read the batch arrays of `features.encode`.
Items with a negative target (label -1, head -1, start -1) and padding words (word_mask 0) are left out
of the loss, of the count and of the correct count, so padding rows can be made inert that way.
"""

from __future__ import annotations

import jax
from flax import nnx

from xlplastic.config import ModelConfig
from xlplastic.tasks.registry import get_task

__all__ = ["create_head", "head_loss", "head_predict"]


def create_head(kind: str, model_cfg: ModelConfig, num_labels: int, seed: int, pooling: str = "bos") -> nnx.Module:
    """A fresh head for `kind` with `num_labels` outputs; `pooling` matters to classification only."""
    return get_task(kind).new_head(model_cfg, num_labels, nnx.Rngs(params=seed), pooling)


def head_loss(kind, head, h_BxTxD, batch, dropout_key):
    """(summed loss, scored items, correct items) as float32 scalars; divide the sums after adding them up.

    Items: examples (classification, QA features) or real words (tagging, parsing); each kind's `loss`
    says what its loss and its correct items are.
    """
    return get_task(kind).loss(head, h_BxTxD, batch, dropout_key)


def head_predict(kind, head, h_BxTxD, batch) -> dict[str, jax.Array]:
    """Deterministic predictions, batched along axis 0, for `features.score` (each kind's `predict` lists them)."""
    return get_task(kind).predict(head, h_BxTxD, batch)
