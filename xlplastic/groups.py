"""Parameter groups: every leaf gets one label from its path, once.

The optimizer is `optax.multi_transform` over these labels, so the same labelling later serves
forgetting (reset group G and its optimizer state), relearning stages (which groups train) and
assembly (take group G from checkpoint A). First matching pattern wins.

A language-specific copy (`lang_<l>/...`, see `model.separate`) is labelled `<group>@<l>`: a selector
naming the plain group (`token_embedding`) covers every language's copy too, one naming `group@l` only
that copy, so forgetting, trainable groups and assembly need no special case for separate parameters.

Which groups a model has is a function of its config alone (`model_groups`), so configs are checked
against it when they load, without building a model; this module imports JAX only where it needs it.
"""

from __future__ import annotations

import re

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
    (r"^(layer_\d+|layers|final_norm)(/|$)", "body"),  # `layers`: the scanned stack (model.scan_layers)
    (r"^mlm_head/", "mlm_head"),
    (r"^task_head/", "task_head"),
)


_LANG_PREFIX = re.compile(r"^lang_([^/]+)/(.*)$")


def base_group(label: str) -> str:
    """`body@fr` -> `body`; a shared label is its own base."""
    return label.split("@", 1)[0]


def selects(selector: str, label: str) -> bool:
    """Whether a group selector (`body`, or `body@fr` for one language's copy) covers a leaf label."""
    return selector == label or selector == base_group(label)


def model_groups(model, task: bool = False) -> list[str]:
    """The group selectors a model of config `model` (a ModelConfig) has, without building it: each group
    it has parameters in (`task_head` only in a task run: `task`), then each language's copies
    (`token_embedding@fr`, ...) with `model.separate`. Mirrors `model.Encoder` and DEFAULT_RULES (a test
    compares it with the labels of built models)."""
    sep = model.separate
    out = ["token_embedding", "position_embedding"]
    if model.num_languages:
        out.append("language_embedding")
    out += ["embedding_norm", "body", "mlm_head"]  # embed_norm, the layers (or their copies), the MLM head
    if task:
        out.append("task_head")
    if sep.any:
        copied = [g for g, on in (("token_embedding", sep.embeddings), ("position_embedding", sep.position_copies),
                                  ("body", sep.layers > 0)) if on]
        out += [f"{g}@{lang}" for g in copied for lang in model.languages]
    return out


def select_labels(selectors, labels) -> frozenset[str]:
    """The labels (of those present) that any of `selectors` covers."""
    import jax

    present = set(jax.tree.leaves(labels)) if isinstance(labels, dict) else set(labels)
    return frozenset(l for l in present if any(selects(s, l) for s in selectors))


def check_selectors(selectors, where: str) -> None:
    """Unknown group names are config errors (a typo would silently select nothing)."""
    from xlplastic.errors import UserError

    unknown = sorted({s for s in selectors if base_group(s) not in GROUPS})
    if unknown:
        raise UserError(f"{where} names unknown parameter group(s) {', '.join(unknown)}; expected some of "
                        f"{', '.join(GROUPS)} (optionally `group@language` for one language's copy)")


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def label_params(params, rules=DEFAULT_RULES) -> dict:
    """Same-structure tree of group names; an unlabelled leaf is an error (it would silently not train)."""
    import jax

    compiled = [(re.compile(p), g) for p, g in rules]

    def label(path, _):
        s = path_str(path)
        m = _LANG_PREFIX.match(s)
        inner, suffix = (m.group(2), f"@{m.group(1)}") if m else (s, "")
        for pattern, group in compiled:
            if pattern.search(inner):
                return group + suffix
        raise ValueError(f"parameter {s!r} matches no parameter-group rule")

    return jax.tree_util.tree_map_with_path(label, params)


def decay_mask(params) -> dict:
    """Weight decay on matrices only (not biases or layer-norm scales), as BERT/RoBERTa recipes do; a
    scanned stack's leading `layers` axis does not count (a stacked bias is still a bias)."""
    import jax

    from xlplastic.layout import is_stacked

    return jax.tree_util.tree_map_with_path(lambda p, x: x.ndim - is_stacked(path_str(p)) >= 2, params)
