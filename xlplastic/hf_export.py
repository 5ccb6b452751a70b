"""`xlplastic export RUN --hf DIR`: a run's encoder as a Hugging Face ...ForMaskedLM folder (docs/hf.md).

Writes `config.json`, `model.safetensors` (the key map of hf.py run backwards) and the tokenizer files,
so that `transformers.AutoModelForMaskedLM.from_pretrained(DIR)` loads it with no missing or unexpected
keys and computes the same logits. The parameters are gathered one shard at a time (on several
processes each shard is replicated on its own, never the whole parameter) and written by process 0
straight into a memory map of the output file. Models HF cannot hold (language-specific copies,
language embeddings, pre-LN, relative attention, a multilingual vocabulary layout) are refused first,
with one line, before anything is written.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict
from jax.sharding import NamedSharding, PartitionSpec

from xlplastic.config import Config, MeshConfig
from xlplastic.data.tokenizers import SpecialTokens
from xlplastic.errors import UserError
from xlplastic.hf import Leaf, leaves
from xlplastic.hf_config import HFConfig, hf_dir
from xlplastic.layout import is_stacked, unrolled_keys
from xlplastic.paths import as_path
from xlplastic.runtime import barrier, is_main
from xlplastic.runtime import log as main_log

ARCHS = {"bert": ("bert", "BertForMaskedLM"), "roberta": ("roberta", "RobertaForMaskedLM"),
         "xlm-roberta": ("xlm-roberta", "XLMRobertaForMaskedLM")}


def refusal(cfg: Config, tokenizer) -> str | None:
    """Why HF's BERT/RoBERTa cannot hold this model, or None."""
    m = cfg.model
    if m.separate.any:
        return ("model.separate: language-specific copies of embeddings or layers (Sep); HF BERT/RoBERTa have one "
                "set of each")
    if m.num_languages:
        return "model.num_languages: language embeddings; HF BERT/RoBERTa have none"
    if m.norm != "post":
        return "model.norm is pre (pre-LN); HF BERT/RoBERTa are post-LN"
    if m.relative_attention:
        return "model.relative_attention: a relative attention bias; HF BERT/RoBERTa use absolute positions only"
    if not hasattr(tokenizer, "to_str") or not hasattr(tokenizer, "save"):
        return "a multilingual vocabulary layout (vocabulary.json: several tokenizers); HF holds one tokenizer"
    return None


def default_arch(cfg: Config, tokenizer) -> str:
    if cfg.model.position_offset:
        return "roberta"
    return "bert" if tokenizer.token_to_id("[CLS]") is not None and tokenizer.token_to_id("<s>") is None else "roberta"


def _hf_config(cfg: Config, arch: str, vocab: int, sp: SpecialTokens, out: Path) -> tuple[HFConfig, dict, int]:
    """(the HF shapes as an HFConfig, config.json, row shift: HF position row = xlplastic row + shift)."""
    m = cfg.model
    offset = 0 if arch == "bert" else sp.pad + 1
    shift = offset - m.position_offset
    positions = m.max_positions + shift
    if positions <= offset:
        raise UserError(f"model.max_positions {m.max_positions} leaves no {arch} position after the offset {offset}")
    model_type, cls = ARCHS[arch]
    raw = {
        "architectures": [cls], "model_type": model_type, "vocab_size": vocab, "hidden_size": m.hidden_size,
        "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads, "intermediate_size": m.mlp_dim,
        "hidden_act": "gelu", "hidden_dropout_prob": m.dropout, "attention_probs_dropout_prob": m.attention_dropout,
        "max_position_embeddings": positions, "type_vocab_size": max(1, m.type_vocab_size),
        "initializer_range": m.init_std, "layer_norm_eps": m.layer_norm_eps, "pad_token_id": sp.pad,
        "bos_token_id": sp.bos, "eos_token_id": sp.eos, "position_embedding_type": "absolute",
        "tie_word_embeddings": True, "dtype": m.param_dtype,
    }
    h = HFConfig(path=out, model_type=model_type, architectures=(cls,), vocab_size=vocab, hidden_size=m.hidden_size,
                 num_layers=m.num_layers, num_heads=m.num_heads, mlp_dim=m.mlp_dim, max_positions=positions,
                 type_vocab_size=raw["type_vocab_size"], layer_norm_eps=m.layer_norm_eps, pad_token_id=sp.pad, raw=raw)
    return h, raw, shift


@lru_cache(maxsize=None)
def _slicer(sizes: tuple, mesh, dtype) -> Callable:
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.jit(lambda x, starts: jax.lax.dynamic_slice(x, starts, sizes), out_shardings=rep)


def shard_pieces(x: jax.Array):
    """Yields (index, host array of that shard) for each distinct shard of a global array, on process 0
    (the other processes take part in the gathers and yield nothing). Never the whole array at once
    unless it is one shard."""
    if jax.process_count() == 1:
        for s in x.addressable_shards:
            if s.replica_id == 0:
                yield s.index, np.asarray(s.data)
        return
    seen = set()
    for idx in x.sharding.devices_indices_map(x.shape).values():
        bounds = tuple(sl.indices(n)[:2] for sl, n in zip(idx, x.shape))
        if bounds in seen:
            continue
        seen.add(bounds)
        sizes = tuple(b - a for a, b in bounds)
        piece = _slicer(sizes, x.sharding.mesh, x.dtype)(x, jnp.asarray([a for a, _ in bounds], jnp.int32))
        if is_main():
            yield tuple(slice(a, b) for a, b in bounds), np.asarray(piece.addressable_data(0))


def _write_piece(region: list[np.ndarray], leaf: Leaf, index, data: np.ndarray, shift: int = 0) -> None:
    """Writes one shard `data` (at `index` of the xlplastic parameter) into the leaf's HF tensor(s)
    `region` (one per source: three for q/k/v), through the key map's index arithmetic backwards."""
    rs = [np.arange(*sl.indices(n)) for sl, n in zip(index, leaf.shape)]
    inv = np.argsort(leaf.perm)

    def one(dst: np.ndarray, rest, piece):
        src = leaf.source_index(rest)
        block = piece.reshape([len(i) for i in (src[p] for p in leaf.perm)]).transpose(inv)
        if shift:  # position rows move (RoBERTa's offset); rows that fall outside the HF table are dropped
            rows = src[0] + shift
            keep = (rows >= 0) & (rows < dst.shape[0])
            src = [rows[keep]] + src[1:]
            block = block[keep]
        if all(len(i) and np.all(np.diff(i) == 1) for i in src):
            dst[tuple(slice(int(i[0]), int(i[-1]) + 1) for i in src)] = block
        elif all(len(i) for i in src):
            dst[np.ix_(*src)] = block

    if leaf.stacked:
        for j, k in enumerate(rs[0]):
            one(region[int(k)], rs[1:], data[j])
    else:
        one(region[0], rs, data)


def export(cfg: Config, params: dict, tokenizer, specials: SpecialTokens, out: str | Path, arch: str | None = None,
           log: Callable[[str], None] = main_log) -> Path:
    """Writes the encoder `params` (sharded global arrays in xlplastic's layout) of a model of config `cfg`
    as an HF folder `out`. Refusals and argument errors come before anything is written."""
    out = Path(out).expanduser()
    why = refusal(cfg, tokenizer)
    if why is not None:
        raise UserError(f"export: refused, HF cannot hold this model: {why}")
    arch = arch or default_arch(cfg, tokenizer)
    if arch not in ARCHS:
        raise UserError(f"export: --arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if out.exists() and not out.is_dir():
        raise UserError(f"export: {out} is a file; expected a folder (or a path that does not exist yet)")
    flat = _unrolled(params)
    vocab = int(flat["token_embed"].shape[0])
    if tokenizer.get_vocab_size() > vocab:
        raise UserError(f"export: the tokenizer has {tokenizer.get_vocab_size()} tokens but the embeddings {vocab} rows; "
                        "expected rows >= tokenizer size")
    h, raw, shift = _hf_config(cfg, arch, vocab, specials, out)
    prefix = "bert." if arch == "bert" else "roberta."
    enc, head = leaves(h, prefix)
    missing = [l.key for l in enc + head if l.key not in flat and l.key != "type_embed"]
    if missing:
        raise UserError(f"export: the model has no `{missing[0]}`; expected an encoder with its masked-LM head")
    # (leaf in xlplastic's shapes, the HF tensors' shape): the position table is copied row for row, moved
    # by `shift` rows into HF's (RoBERTa's rows start after padding_idx)
    plan: list[tuple[Leaf, tuple]] = []
    for l in enc + head:
        if l.key == "position_embed":
            xl = tuple(flat[l.key].shape)
            plan.append((Leaf(l.key, l.sources, xl, xl), l.hf_shape))
        elif l.key in flat or l.key == "type_embed":
            plan.append((l, l.hf_shape))
    dtype = {"float32": ("F32", np.float32), "bfloat16": ("BF16", np.uint16)}[cfg.model.param_dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "producer": "xlplastic export"}}
    offsets: dict[str, int] = {}
    pos = 0
    for l, hf_shape in plan:
        for s in l.sources:
            n = math.prod(hf_shape) * np.dtype(dtype[1]).itemsize
            header[s] = {"dtype": dtype[0], "shape": list(hf_shape), "data_offsets": [pos, pos + n]}
            offsets[s] = pos
            pos += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    start = 8 + len(blob)
    tmp = out / ".model.safetensors.tmp"
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little") + blob)
            f.truncate(start + pos)  # zeros (sparse) until written: RoBERTa's rows before the offset stay zero
    try:
        mm = np.memmap(tmp, dtype=np.uint8, mode="r+") if is_main() else None
        for l, hf_shape in plan:
            if l.key not in flat:  # no token types in the model: HF's one type row stays zero
                continue
            x = flat[l.key]
            if callable(x):  # one layer of a scanned stack, sliced on device when its turn comes
                x = x()
            regions = [np.ndarray(hf_shape, dtype[1], buffer=mm, offset=start + offsets[s]) for s in l.sources] if mm is not None else None
            for index, data in shard_pieces(x):
                if dtype[0] == "BF16":
                    data = np.asarray(data).view(np.uint16)
                _write_piece(regions, l, index, np.asarray(data), shift if l.key == "position_embed" else 0)
        if mm is not None:
            mm.flush()
            del mm
    except BaseException:
        if is_main():
            tmp.unlink(missing_ok=True)
        raise
    if is_main():
        tmp.replace(out / "model.safetensors")
        _write_json(out / "config.json", raw)
        _write_tokenizer(tokenizer, specials, arch, h.max_positions - (0 if arch == "bert" else specials.pad + 1), out)
    barrier("hf-export")
    log(f"export: {arch} ({ARCHS[arch][1]}) written to {out}: config.json, model.safetensors "
        f"({len(header) - 1} tensors, {pos / 1e6:.1f} MB), tokenizer.json")
    return out


def _unrolled(params: dict) -> dict:
    """The parameters by unrolled path; a scanned stack's layers (`layers/x` -> `layer_<i>/x`) as callables
    that slice one layer on device (onto the stack's sharding less its `layers` axis), so export never holds
    a second copy of the whole body."""
    flat = {"/".join(k): v for k, v in flatten_dict(params).items()}
    stacked = {k: v for k, v in flat.items() if is_stacked(k)}
    out = {k: v for k, v in flat.items() if k not in stacked}
    first = 1 + max((int(k.split("/")[0][6:]) for k in out if k.startswith("layer_")), default=-1)
    for k, x in stacked.items():
        one = NamedSharding(x.sharding.mesh, PartitionSpec(*tuple(x.sharding.spec)[1:]))
        take = jax.jit(lambda a, j: a[j], out_shardings=one)
        for j, name in enumerate(unrolled_keys(k, first, x.shape[0])):
            out[name] = partial(take, x, j)
    return out


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    tmp.replace(path)


def _write_tokenizer(tokenizer, sp: SpecialTokens, arch: str, max_len: int, out: Path) -> None:
    """tokenizer.json (with a post-processor adding the specials, as HF users expect, if it had none) and
    the files naming the specials' roles for AutoTokenizer."""
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_str(tokenizer.to_str())
    t = {r: tok.id_to_token(getattr(sp, r)) for r in ("bos", "eos", "pad", "mask", "unk")}
    if tok.post_processor is None:
        pair = f"{t['bos']} $A {t['eos']} $B:1 {t['eos']}:1" if arch == "bert" else \
            f"{t['bos']} $A {t['eos']} {t['eos']} $B {t['eos']}"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{t['bos']} $A {t['eos']}", pair=pair, special_tokens=[(t["bos"], sp.bos), (t["eos"], sp.eos)])
    tmp = out / "tokenizer.json.tmp"
    tok.save(str(tmp))
    tmp.replace(out / "tokenizer.json")
    roles = {"bos_token": t["bos"], "eos_token": t["eos"], "cls_token": t["bos"], "sep_token": t["eos"],
             "pad_token": t["pad"], "mask_token": t["mask"], "unk_token": t["unk"]}
    _write_json(out / "special_tokens_map.json", roles)
    _write_json(out / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
                                                "clean_up_tokenization_spaces": False, **roles})


def export_run(run: str | Path, out: str | Path, arch: str | None = None, log: Callable[[str], None] = main_log) -> Path:
    """A run directory (its latest checkpoint, loaded split over all devices along fsdp) or an `hf:DIR`
    model, exported as an HF folder."""
    from xlplastic.analysis.reps import load_model

    if hf_dir(run) is None and not as_path(run).is_dir():
        raise UserError(f"export: {run}: run directory not found; expected a folder written by `xlplastic run` (or hf:DIR)")
    mesh = MeshConfig(data=1, fsdp=-1, tensor=1)
    if hf_dir(run) is not None:
        from xlplastic.hf import load_hf

        m = load_hf(run, mesh, log=log)
        if not m.has_mlm_head:
            raise UserError(f"export: {run} has no masked-LM head to export; expected a ...ForMaskedLM model")
        cfg, params, tok, sp = m.config, m.params, m.tokenizer, m.specials
    else:
        lm = load_model(run, mesh=mesh)
        cfg, params, tok, sp = lm.cfg, lm.params, lm.tokenizer, lm.specials
    why = refusal(cfg, tok)  # (again here, so a refused export names its run)
    if why is not None:
        raise UserError(f"export: {run} refused, HF cannot hold this model: {why}")
    return export(cfg, params, tok, sp, out, arch, log)

