"""A Hugging Face model folder's `config.json`, read without JAX: which architecture it is, whether
xlplastic can hold it, and the `model:` fields that describe it (docs/hf.md).

Configs name HF models as `init.from_hf: DIR` or `hf:DIR` where a run directory goes; `resolve` turns
such a config into one whose model section is the HF model's architecture, before a run starts. The
weights themselves are read by hf.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlplastic.errors import UserError
from xlplastic.paths import read_json_object

PREFIX = "hf:"
# model_type -> (architectures accepted, the base model's key prefix in ...ForMaskedLM files)
ARCHS: dict[str, tuple[tuple[str, ...], str]] = {
    "bert": (("BertModel", "BertForMaskedLM", "BertForPreTraining"), "bert"),
    "roberta": (("RobertaModel", "RobertaForMaskedLM"), "roberta"),
    "xlm-roberta": (("XLMRobertaModel", "XLMRobertaForMaskedLM"), "roberta"),
}
SUPPORTED = ", ".join(a for archs, _ in ARCHS.values() for a in archs if a != "BertForPreTraining")
_EXACT_GELU = ("gelu", "gelu_python")  # erf GELU, as model.py computes it


def hf_dir(source: str | Path | None) -> Path | None:
    """The folder of an `hf:DIR` source, else None (a run directory)."""
    s = str(source) if source is not None else ""
    return Path(s[len(PREFIX):]).expanduser() if s.startswith(PREFIX) else None


def uses_hf(icfg) -> bool:
    """Whether an InitConfig's base is an HF model: a run's parameters are then read onto the mesh, not
    drawn first and replaced."""
    return hf_dir(icfg.base) is not None


@dataclass(frozen=True)
class HFConfig:
    """What xlplastic needs of an HF encoder's config.json."""

    path: Path  # the model folder
    model_type: str  # bert | roberta | xlm-roberta
    architectures: tuple[str, ...]
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int
    raw: dict

    @property
    def prefix(self) -> str:
        """The base model's key prefix in a ...ForMaskedLM state dict (`bert.` / `roberta.`)."""
        return ARCHS[self.model_type][1]

    @property
    def position_offset(self) -> int:
        """RoBERTa/XLM-R positions start at padding_idx + 1 (fairseq); BERT's at 0."""
        return 0 if self.model_type == "bert" else self.pad_token_id + 1

    def model_fields(self, *, vocab: bool = True) -> dict[str, Any]:
        """The `model:` keys that make xlplastic's Encoder this architecture (`vocab`: also its vocabulary
        size, the embedding matrix's rows; left out where the run brings its own tokenizer)."""
        out: dict[str, Any] = {
            "hidden_size": self.hidden_size, "num_layers": self.num_layers, "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim, "max_positions": self.max_positions, "position_offset": self.position_offset,
            "type_vocab_size": self.type_vocab_size, "layer_norm_eps": self.layer_norm_eps, "norm": "post",
        }
        if vocab:
            out["vocab_size"] = self.vocab_size
        return out


def read_config(folder: str | Path) -> HFConfig:
    """The folder's config.json, checked: one line for a missing folder or file, bad JSON, an
    architecture xlplastic does not hold, or settings its Encoder does not compute."""
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise UserError(f"{d}: Hugging Face model folder not found; expected a folder with config.json, "
                        "model.safetensors and tokenizer.json")
    f = d / "config.json"
    if not f.is_file():
        raise UserError(f"{d}: no config.json; expected a Hugging Face model folder (save_pretrained)")
    raw = read_json_object(f, "a Hugging Face config.json object")
    mt = raw.get("model_type")
    archs = tuple(raw.get("architectures") or ())
    if mt not in ARCHS:
        what = f"model_type {mt!r}" + (f" ({', '.join(archs)})" if archs else "")
        raise UserError(f"{f}: {what} is not supported; expected one of {SUPPORTED}")
    bad = [a for a in archs if a not in ARCHS[mt][0]]
    if bad:
        raise UserError(f"{f}: architecture {bad[0]} is not supported (an encoder with another head); expected one "
                        f"of {', '.join(ARCHS[mt][0][:2])}")

    def need(key: str, kind=int):
        v = raw.get(key)
        if not isinstance(v, kind) or isinstance(v, bool) or (kind is int and v < 1 and key != "pad_token_id"):
            raise UserError(f"{f}: `{key}` is {v!r}; expected a {'positive integer' if kind is int else 'number'}")
        return v

    act = raw.get("hidden_act", "gelu")
    if act not in _EXACT_GELU:
        raise UserError(f"{f}: hidden_act {act!r} is not supported; expected `gelu` (erf), the one xlplastic computes")
    pos = raw.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise UserError(f"{f}: position_embedding_type {pos!r} is not supported; expected `absolute`")
    if raw.get("is_decoder") or raw.get("add_cross_attention"):
        raise UserError(f"{f}: a decoder (is_decoder / add_cross_attention) is not supported; expected an encoder")
    D, N = need("hidden_size"), need("num_attention_heads")
    if D % N:
        raise UserError(f"{f}: hidden_size {D} is not divisible by num_attention_heads {N}; expected a multiple")
    pad = raw.get("pad_token_id", 0 if mt == "bert" else 1)
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
        raise UserError(f"{f}: pad_token_id is {pad!r}; expected the padding token's id")
    types = raw.get("type_vocab_size", 2)
    if not isinstance(types, int) or isinstance(types, bool) or types < 0:
        raise UserError(f"{f}: type_vocab_size is {types!r}; expected a non-negative integer")
    eps = raw.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps <= 0:
        raise UserError(f"{f}: layer_norm_eps is {eps!r}; expected a positive number")
    h = HFConfig(path=d, model_type=mt, architectures=archs, vocab_size=need("vocab_size"), hidden_size=D,
                 num_layers=need("num_hidden_layers"), num_heads=N, mlp_dim=need("intermediate_size"),
                 max_positions=need("max_position_embeddings"), type_vocab_size=types, layer_norm_eps=float(eps),
                 pad_token_id=pad, raw=raw)
    if h.position_offset >= h.max_positions:
        raise UserError(f"{f}: pad_token_id {pad} puts RoBERTa's first position at row {h.position_offset}, past "
                        f"max_position_embeddings {h.max_positions}; expected pad_token_id + 1 < max_position_embeddings")
    return h


# Model keys an HF encoder has no counterpart for: a config asking for them with init.from_hf is refused.
_NOT_IN_HF = {"num_languages": 0, "relative_attention": 0, "norm": "post"}


def resolve(cfg):
    """`cfg` (a Config) with its model section set to the HF base model's architecture when `init`'s base
    is one (`init.from_hf: DIR` or `init.from_run: hf:DIR`); data.tokenizer.path defaults to the folder's
    tokenizer.json (unless the token embeddings are re-drawn or taken from elsewhere: then the run's own
    tokenizer, trained as data.tokenizer says), and when that is the tokenizer, model.vocab_size is the
    embedding matrix's rows. Other model keys (dropout, dtypes, remat) stay the config's. Any other
    config is returned as is."""
    from xlplastic.config import validate
    from xlplastic.groups import base_group

    d = hf_dir(cfg.init.base)
    if d is None:
        return cfg
    h = read_config(d)
    raw = cfg.model_dump(mode="json")
    for k, default in _NOT_IN_HF.items():
        if raw["model"].get(k) != default:
            raise UserError(f"init.from_hf {d}: model.{k} is {raw['model'][k]!r}, which an HF {h.model_type} model does "
                            f"not have; expected {default!r}")
    if cfg.model.separate.any:
        raise UserError(f"init.from_hf {d}: model.separate asks for language-specific copies, which an HF model does not "
                        "have; expected none")
    tok = raw["data"]["tokenizer"]
    redrawn = any(base_group(g) == "token_embedding" for g in cfg.init.reinit) or "token_embedding" in cfg.init.groups_from
    if not tok.get("path") and not redrawn:  # (new token embeddings: the run trains its own tokenizer)
        if tok.get("per_language") or tok.get("anchors") == "none":
            raise UserError(f"init.from_hf {d}: data.tokenizer asks for a multilingual layout; expected the HF model's "
                            "own tokenizer (or data.tokenizer.path)")
        tok["path"] = str(d / "tokenizer.json")
    own = bool(tok.get("path")) and Path(tok["path"]).expanduser().resolve() == (d / "tokenizer.json").resolve()
    raw["model"].update(h.model_fields(vocab=own))
    return validate(raw, source=f"init.from_hf {d}", run=True)
