"""Parameter groups: every leaf gets one label from its path, once.

The optimizer is `optax.multi_transform` over these labels, so the same labelling later serves
forgetting (reset group G and its optimizer state), relearning stages (which groups train) and
assembly (take group G from checkpoint A). First matching pattern wins.
"""

from __future__ import annotations

import re

import jax

GROUPS = (
    "token_embedding",
    "position_embedding",
    "language_embedding",
    "embedding_norm",
    "body",
    "mlm_head",
    "task_head",
)

DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    (r"^token_embed$", "token_embedding"),
    (r"^position_embed$", "position_embedding"),
    (r"^language_embed$", "language_embedding"),
    (r"^(embed_norm|type_embed)(/|$)", "embedding_norm"),
    (r"^(layer_\d+|final_norm)(/|$)", "body"),
    (r"^mlm_head/", "mlm_head"),
    (r"^task_head/", "task_head"),
)


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def label_params(params, rules=DEFAULT_RULES) -> dict:
    """Same-structure tree of group names; an unlabelled leaf is an error (it would silently not train)."""
    compiled = [(re.compile(p), g) for p, g in rules]

    def label(path, _):
        s = path_str(path)
        for pattern, group in compiled:
            if pattern.search(s):
                return group
        raise ValueError(f"parameter {s!r} matches no parameter-group rule")

    return jax.tree_util.tree_map_with_path(label, params)


def decay_mask(params) -> dict:
    """Weight decay on matrices only (not biases or layer-norm scales), as BERT/RoBERTa recipes do."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)
