"""Hugging Face BERT / RoBERTa / XLM-R models in: a local model folder straight onto the mesh (docs/hf.md).

A folder holds `config.json` (hf_config.py reads it), the weights (`model.safetensors`, or shards with
`model.safetensors.index.json`; `pytorch_model.bin` only through `torch.load(weights_only=True)`) and
`tokenizer.json`. Every tensor of the weights is either mapped to an xlplastic parameter (the key map:
`leaves`) or named as skipped in one line (the pooler, buffers, the tied decoder); anything else is an
error. Each parameter is made with `jax.make_array_from_callback` on its target sharding: every device
reads only its own slice of the memory-mapped file (transposed and reshaped to xlplastic's layout on the
way), so no host ever holds the whole model, and nothing is drawn at random only to be overwritten.

`load_hf(DIR)` returns an `HFModel` (parameters, tokenizer, `hidden_states`); `read_params` is the same
import as a source of parameter groups for `init` (assemble.py), with the contract of
`checkpoint.load_params`.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh

from xlplastic import model as model_lib
from xlplastic.config import Config, MeshConfig, validate
from xlplastic.data.tokenizer_json import read_tokenizer_json
from xlplastic.data.tokenizers import SpecialTokens, special_tokens
from xlplastic.errors import UserError
from xlplastic.hf_config import HFConfig, hf_dir, read_config
from xlplastic.layout import layout_of, stack_map
from xlplastic.runtime import log as main_log
from xlplastic.runtime import sha
from xlplastic.sharding import activation_rules, describe, make_mesh, replicated, tree_shardings

# ----------------------------------------------------------------------------------------------
# Weight files, memory-mapped

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _as_float(a: np.ndarray, code: str) -> np.ndarray:
    """A slice as float32 (a copy of the slice only); bfloat16 bits are widened exactly."""
    if code == "BF16":
        return (np.asarray(a, np.uint32) << 16).view(np.float32)
    return np.asarray(a, np.float32)


class SafetensorsFile:
    """A safetensors file's header, checked against the file's size, and its tensors as views of one
    read-only memory map (reading a slice touches only the pages of that slice)."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ValueError("shorter than its 8-byte header length")
                (n,) = struct.unpack("<Q", head)
                if 8 + n > size:
                    raise ValueError(f"header of {n} bytes but the file has {size}")
                header = json.loads(f.read(n))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: truncated or damaged safetensors file ({e}); expected a complete file "
                            "(re-download or re-save it)") from None
        self.data_start = 8 + n
        self.tensors: dict[str, tuple[tuple[int, ...], str, int]] = {}  # name -> (shape, dtype code, byte offset)
        end = 0
        for name, t in header.items():
            if name == "__metadata__":
                continue
            try:
                shape, code, (b, e) = tuple(int(s) for s in t["shape"]), t["dtype"], t["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{path}: damaged safetensors header (entry `{name}`); expected shape, dtype and "
                                "data_offsets for every tensor") from None
            if code not in _ST_DTYPES:
                raise UserError(f"{path}: tensor `{name}` has dtype {code}; expected one of {', '.join(_ST_DTYPES)}")
            if e - b != math.prod(shape) * np.dtype(_ST_DTYPES[code]).itemsize:
                raise UserError(f"{path}: tensor `{name}` {list(shape)} {code} spans {e - b} bytes; expected "
                                f"{math.prod(shape) * np.dtype(_ST_DTYPES[code]).itemsize} (a damaged file)")
            self.tensors[name] = (shape, code, self.data_start + b)
            end = max(end, e)
        if self.data_start + end > size:
            raise UserError(f"{path}: truncated safetensors file: its tensors need {self.data_start + end} bytes but "
                            f"the file has {size}; expected a complete file (re-download or re-save it)")
        self._mm: np.memmap | None = None

    def array(self, name: str) -> np.ndarray:
        shape, code, offset = self.tensors[name]
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        return np.ndarray(shape, dtype=_ST_DTYPES[code], buffer=self._mm, offset=offset)

    def code(self, name: str) -> str:
        return self.tensors[name][1]


class TorchBinFile:
    """A `pytorch_model.bin` through `torch.load(weights_only=True, mmap=True)`: plain tensors only, never
    an arbitrary pickle; memory-mapped where the file is in torch's zip format."""

    def __init__(self, path: Path, log: Callable[[str], None]):
        try:
            import torch
        except ImportError:
            raise UserError(f"{path}: reading a .bin checkpoint needs PyTorch (the [torch] extra); expected "
                            "model.safetensors, or PyTorch installed") from None
        self.path = path
        try:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                log(f"hf: {path.name} is in torch's legacy format: read whole (not memory-mapped)")
                sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError, zip errors)
            first = re.sub(r"\x1b\[[0-9;]*m", "", (str(e).strip().splitlines() or [""])[0])
            if "Weights only load failed" in first:
                first = "it holds objects other than tensors, which only an unsafe pickle load could rebuild"
            raise UserError(f"{path}: cannot be read with torch.load(weights_only=True) ({type(e).__name__}: "
                            f"{first[:160]}); expected plain tensors (xlplastic never unpickles arbitrary objects: "
                            "convert it to model.safetensors)") from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise UserError(f"{path}: not a state dict of tensors; expected a model's weights (name -> tensor)")
        self._sd = sd
        codes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                 torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL", torch.int8: "I8"}
        self.tensors = {}
        for k, v in sd.items():
            if v.dtype not in codes:
                raise UserError(f"{path}: tensor `{k}` has dtype {v.dtype}; expected a float or integer tensor")
            self.tensors[k] = (tuple(v.shape), codes[v.dtype], 0)

    def array(self, name: str) -> np.ndarray:
        import torch

        t = self._sd[name]
        return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()

    def code(self, name: str) -> str:
        return self.tensors[name][1]


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class Weights:
    """All tensors of a folder's weights (one file or the shards an index names), by name."""

    def __init__(self, folder: Path, log: Callable[[str], None] = main_log):
        found = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        if found is None:
            raise UserError(f"{folder}: no weights file; expected model.safetensors (or model.safetensors.index.json "
                            "with its shards, or pytorch_model.bin)")
        if found.name.endswith(".index.json"):
            try:
                wmap = json.loads(found.read_text(encoding="utf-8"))["weight_map"]
                if not isinstance(wmap, dict):
                    raise TypeError
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise UserError(f"{found}: not a valid index; expected JSON with a `weight_map` of tensor -> file") from None
            names = sorted(set(wmap.values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise UserError(f"{found}: names shard {missing[0]}, which is missing from {folder}; expected every "
                                f"shard of the checkpoint ({len(names)} files)")
            paths = [folder / n for n in names]
            self.describe = f"{len(paths)} shards ({found.name})"
        else:
            wmap, paths = None, [found]
            self.describe = found.name
        self.files = [SafetensorsFile(p) if p.suffix == ".safetensors" else TorchBinFile(p, log) for p in paths]
        self.where: dict[str, Any] = {}
        for f in self.files:
            for name in f.tensors:
                if name in self.where:
                    raise UserError(f"{f.path}: tensor `{name}` is also in {self.where[name].path.name}; expected each "
                                    "tensor in one shard")
                self.where[name] = f
        if wmap is not None:
            absent = [k for k in wmap if k not in self.where]
            if absent:
                raise UserError(f"{found}: maps `{absent[0]}` to {wmap[absent[0]]}, which does not hold it; expected "
                                "the index and its shards to agree")

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.where[name].tensors[name][0]

    def read(self, name: str, index: Sequence[np.ndarray]) -> np.ndarray:
        """float32 of the tensor at the outer product of per-axis index arrays (read as a slice where the
        indices are contiguous, so only those pages are touched)."""
        f = self.where[name]
        a = f.array(name)
        box = tuple(slice(int(i[0]), int(i[-1]) + 1) if len(i) else slice(0, 0) for i in index)
        view = a[box]
        if any(len(i) and (int(i[-1]) - int(i[0]) + 1 != len(i) or np.any(np.diff(i) != 1)) for i in index):
            view = view[np.ix_(*[np.asarray(i) - (int(i[0]) if len(i) else 0) for i in index])]
        return _as_float(view, f.code(name))

    def whole(self, name: str) -> np.ndarray:
        return self.read(name, [np.arange(n) for n in self.shape(name)])


# ----------------------------------------------------------------------------------------------
# The key map


@dataclass(frozen=True)
class Leaf:
    """One xlplastic parameter and the HF tensor(s) it is made of: each source S (config shape `hf_shape`)
    becomes S.transpose(perm).reshape(shape) (with `stacked`, sources are stacked on a new first axis)."""

    key: str  # xlplastic path, e.g. layer_0/attention/qkv_kernel
    sources: tuple[str, ...]  # HF names as the key map spells them (before aliases / prefix)
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]
    perm: tuple[int, ...] = (0, 1)
    stacked: bool = False

    @property
    def sub_shape(self) -> tuple[int, ...]:
        return self.shape[1:] if self.stacked else self.shape

    def groups(self) -> list[list[int]]:
        """For each permuted source axis, the target dimensions it splits into (row-major)."""
        sub, out, j = self.sub_shape, [], 0
        for n in (self.hf_shape[p] for p in self.perm):
            g, prod = [j], sub[j]
            j += 1
            while prod < n:
                g.append(j)
                prod *= sub[j]
                j += 1
            if prod != n:
                raise AssertionError(f"key map: {self.key} {self.shape} is not a reshape of {self.hf_shape}")
            out.append(g)
        return out

    def source_index(self, ranges: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per source axis, the indices that the target slice (ranges of the non-stacked target dims) reads."""
        sub = self.sub_shape
        src: list[np.ndarray] = [np.zeros(0, np.int64)] * len(self.hf_shape)
        for axis, g in zip(self.perm, self.groups()):
            flat = np.zeros(1, np.int64)
            for d in g:
                flat = (flat[:, None] * sub[d] + np.asarray(ranges[d], np.int64)[None, :]).ravel()
            src[axis] = flat
        return src


def _vec(key, name, n):
    return Leaf(key, (name,), (n,), (n,), perm=(0,))


def _norm(key, name, D):
    return [_vec(f"{key}/scale", f"{name}.weight", D), _vec(f"{key}/bias", f"{name}.bias", D)]


def _head_names(model_type: str) -> dict[str, str]:
    if model_type == "bert":
        return {"dense": "cls.predictions.transform.dense", "norm": "cls.predictions.transform.LayerNorm",
                "bias": "cls.predictions.bias", "decoder": "cls.predictions.decoder"}
    return {"dense": "lm_head.dense", "norm": "lm_head.layer_norm", "bias": "lm_head.bias", "decoder": "lm_head.decoder"}


def leaves(h: HFConfig, base: str) -> tuple[list[Leaf], list[Leaf]]:
    """(encoder leaves, MLM-head leaves) of an HF model whose base-model keys start with `base`
    ('' for a BertModel file, 'bert.' / 'roberta.' for ...ForMaskedLM)."""
    D, F, N, V, P = h.hidden_size, h.mlp_dim, h.num_heads, h.vocab_size, h.max_positions
    H = D // N
    e = f"{base}embeddings."
    enc = [Leaf("token_embed", (e + "word_embeddings.weight",), (V, D), (V, D)),
           Leaf("position_embed", (e + "position_embeddings.weight",), (P, D), (P, D))]
    if h.type_vocab_size:
        enc.append(Leaf("type_embed", (e + "token_type_embeddings.weight",), (h.type_vocab_size, D), (h.type_vocab_size, D)))
    enc += _norm("embed_norm", e + "LayerNorm", D)
    for i in range(h.num_layers):
        p, k = f"{base}encoder.layer.{i}.", f"layer_{i}/"
        qkv = tuple(f"{p}attention.self.{n}" for n in ("query", "key", "value"))
        enc += [
            Leaf(k + "attention/qkv_kernel", tuple(q + ".weight" for q in qkv), (D, D), (3, D, N, H), (1, 0), True),
            Leaf(k + "attention/qkv_bias", tuple(q + ".bias" for q in qkv), (D,), (3, N, H), (0,), True),
            Leaf(k + "attention/out_kernel", (p + "attention.output.dense.weight",), (D, D), (N, H, D), (1, 0)),
            _vec(k + "attention/out_bias", p + "attention.output.dense.bias", D),
            *_norm(k + "attention_norm", p + "attention.output.LayerNorm", D),
            Leaf(k + "mlp/in_kernel", (p + "intermediate.dense.weight",), (F, D), (D, F), (1, 0)),
            _vec(k + "mlp/in_bias", p + "intermediate.dense.bias", F),
            Leaf(k + "mlp/out_kernel", (p + "output.dense.weight",), (D, F), (F, D), (1, 0)),
            _vec(k + "mlp/out_bias", p + "output.dense.bias", D),
            *_norm(k + "mlp_norm", p + "output.LayerNorm", D),
        ]
    hn = _head_names(h.model_type)
    head = [Leaf("mlm_head/kernel", (hn["dense"] + ".weight",), (D, D), (D, D), (1, 0)),
            _vec("mlm_head/bias", hn["dense"] + ".bias", D),
            *_norm("mlm_head/norm", hn["norm"], D),
            _vec("mlm_head/output_bias", hn["bias"], V)]
    return enc, head


def _aliases(name: str) -> list[str]:
    """Other spellings of a key: TF-converted BERTs call LayerNorm's weight/bias gamma/beta, and the
    decoder bias may be saved only as `...decoder.bias`."""
    out = [name]
    if name.endswith("LayerNorm.weight") or name.endswith("layer_norm.weight"):
        out.append(name[: -len("weight")] + "gamma")
    if name.endswith("LayerNorm.bias") or name.endswith("layer_norm.bias"):
        out.append(name[: -len("bias")] + "beta")
    if name in ("lm_head.bias", "cls.predictions.bias"):
        out.append(name[: -len("bias")] + "decoder.bias")
    return out


_BUFFERS = re.compile(r"(^|\.)(position_ids|token_type_ids)$")
_POOLER = re.compile(r"^((bert|roberta)\.)?pooler\.")
_NSP = re.compile(r"^cls\.seq_relationship\.")


@dataclass
class Plan:
    """How a folder's tensors become parameters: every tensor used, or skipped for a stated reason."""

    h: HFConfig
    weights: Weights
    leaves: list[Leaf]  # with sources resolved to the file's names
    has_head: bool
    skipped: list[tuple[str, str]]  # (name, why)

    def by_key(self) -> dict[str, Leaf]:
        return {l.key: l for l in self.leaves}


def make_plan(h: HFConfig, w: Weights) -> Plan:
    """Resolves the key map against the file: prefix, aliases, shapes against config.json, the head, the
    tied decoder, and what is skipped; an unknown or missing tensor is an error."""
    names = set(w.names())
    prefix = h.prefix + "."
    word = "embeddings.word_embeddings.weight"
    if prefix + word in names:
        base = prefix
    elif word in names:
        base = ""
    else:
        raise UserError(f"{h.path}: the weights ({w.describe}) have no `{prefix}{word}` (nor `{word}`); expected a "
                        f"{h.model_type} checkpoint")
    enc, head = leaves(h, base)

    def find(name: str) -> str | None:
        return next((a for a in _aliases(name) if a in names), None)

    head_found = {l.key: [find(s) for s in l.sources] for l in head}
    present = [k for k, f in head_found.items() if all(f)]
    if present and len(present) < len(head):
        miss = next(s for l in head for s, f in zip(l.sources, head_found[l.key]) if f is None)
        raise UserError(f"{h.path}: the weights have part of the masked-LM head but not `{miss}`; expected the whole "
                        "head or none (a fresh one is drawn then)")
    has_head = bool(present)
    used: list[Leaf] = []
    for l in enc + (head if has_head else []):
        srcs = []
        for s in l.sources:
            f = find(s)
            if f is None:
                raise UserError(f"{h.path}: the weights ({w.describe}) have no tensor `{s}` (for {l.key}); expected a "
                                f"complete {h.model_type} checkpoint with {h.num_layers} layers as config.json says")
            if tuple(w.shape(f)) != l.hf_shape:
                raise UserError(f"{w.where[f].path}: tensor `{f}` has shape {list(w.shape(f))} but config.json gives "
                                f"{list(l.hf_shape)}; expected a checkpoint that matches its config.json")
            srcs.append(f)
        used.append(Leaf(l.key, tuple(srcs), l.hf_shape, l.shape, l.perm, l.stacked))
    taken = {s for l in used for s in l.sources}
    skipped: list[tuple[str, str]] = []
    hn = _head_names(h.model_type)
    emb = base + word
    for n in sorted(names - taken):
        if _BUFFERS.search(n):
            skipped.append((n, "a buffer"))
        elif _POOLER.match(n):
            skipped.append((n, "the pooler, not part of the masked-LM encoder"))
        elif _NSP.match(n):
            skipped.append((n, "the next-sentence head"))
        elif n == hn["decoder"] + ".weight" and has_head:
            _check_same(w, n, emb, "the decoder is tied to the token embeddings in xlplastic")
            skipped.append((n, f"tied to {emb}"))
        elif n in (hn["decoder"] + ".bias", hn["bias"]) and has_head:
            other = next(s for l in used if l.key == "mlm_head/output_bias" for s in l.sources)
            _check_same(w, n, other, "xlplastic has one output bias")
            skipped.append((n, f"the same as {other}"))
        else:
            raise UserError(f"{w.where[n].path}: tensor `{n}` {list(w.shape(n))} is not part of a {h.model_type} encoder "
                            "or its masked-LM head; expected only BERT/RoBERTa keys (nothing is dropped silently)")
    return Plan(h, w, used, has_head, skipped)


def _check_same(w: Weights, a: str, b: str, why: str, rows: int = 4096) -> None:
    """Two tensors that xlplastic holds once must be equal (compared a block of rows at a time)."""
    if tuple(w.shape(a)) != tuple(w.shape(b)):
        raise UserError(f"{w.where[a].path}: `{a}` {list(w.shape(a))} differs in shape from `{b}` {list(w.shape(b))}; "
                        f"expected them equal ({why})")
    shape = w.shape(a)
    for lo in range(0, shape[0], rows):
        idx = [np.arange(lo, min(lo + rows, shape[0]))] + [np.arange(n) for n in shape[1:]]
        if not np.array_equal(w.read(a, idx), w.read(b, idx)):
            raise UserError(f"{w.where[a].path}: `{a}` differs from `{b}`; expected them equal ({why}): an untied "
                            "output layer cannot be held")


# ----------------------------------------------------------------------------------------------
# Onto the mesh


def _ranges(index: tuple, shape: Sequence[int]) -> list[np.ndarray]:
    return [np.arange(*sl.indices(n)) for sl, n in zip(tuple(index) + (slice(None),) * (len(shape) - len(index)), shape)]


def read_leaf_slice(w: Weights, leaf: Leaf, index: tuple) -> np.ndarray:
    rs = _ranges(index, leaf.shape)

    def one(name, rest):
        arr = w.read(name, leaf.source_index(rest))
        return arr.transpose(leaf.perm).reshape([len(r) for r in rest])

    if leaf.stacked:
        return np.stack([one(leaf.sources[int(k)], rs[1:]) for k in rs[0]]) if len(rs[0]) else \
            np.zeros([0] + [len(r) for r in rs[1:]], np.float32)
    return one(leaf.sources[0], rs)


@dataclass(frozen=True)
class LayerStack:
    """A scanned model's stacked parameter (`layers/...`, model.scan_layers): its per-layer Leaves, one
    row each on the leading `layers` axis (never sharded, so every device reads its slice of each layer)."""

    key: str
    parts: tuple[Leaf, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.parts), *self.parts[0].shape)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(s for p in self.parts for s in p.sources)


def read_slice(w: Weights, leaf: "Leaf | LayerStack", index: tuple) -> np.ndarray:
    """The part `index` (slices of the target shape) of an xlplastic parameter, read from the file."""
    if isinstance(leaf, LayerStack):
        rows = _ranges(index[:1], leaf.shape[:1])[0]
        return np.stack([read_leaf_slice(w, leaf.parts[int(j)], tuple(index[1:])) for j in rows])
    return read_leaf_slice(w, leaf, index)


def device_array(w: Weights, leaf: Leaf, sharding, dtype) -> jax.Array:
    """The parameter as a global array on `sharding`: each of this process's devices gets its own slice,
    read from the file and placed before the next is read, so the host holds at most one slice beyond
    the devices' arrays (`jax.make_array_from_callback` would hold every device's slice at once)."""
    arrays = []
    for dev, idx in sharding.addressable_devices_indices_map(leaf.shape).items():
        host = read_slice(w, leaf, idx).astype(dtype)
        arrays.append(jax.device_put(host, dev))
        arrays[-1].block_until_ready()
        del host
    return jax.make_array_from_single_device_arrays(leaf.shape, sharding, arrays)


def undivided_lines(abstract: dict, axes: dict, mesh: Mesh, rules: dict, sources: dict[str, str]) -> list[str]:
    """One line per tensor (layers folded into `*`) with a dimension that its rules would split along a
    mesh axis that does not divide it: it stays whole along that axis."""
    flat_x = {"/".join(k): v for k, v in flatten_dict(abstract).items()}
    flat_a = {"/".join(k): v for k, v in flatten_dict(axes).items()}
    seen: dict[tuple, str] = {}
    for key, x in flat_x.items():
        spec = x.sharding.spec if hasattr(x, "sharding") and x.sharding is not None else ()
        used = {a for e in spec for a in ((e,) if isinstance(e, str) else (e or ()))}
        for i, name in enumerate(flat_a.get(key, ())):
            for ax in (rules.get(name, []) if name else []):
                size = mesh.shape[ax]
                if size > 1 and x.shape[i] % size and ax not in used:
                    src = sources.get(key, key)
                    pattern = re.sub(r"\.layer\.\d+\.", ".layer.*.", src)
                    k = (pattern, i, ax)
                    if k not in seen:
                        seen[k] = (f"hf: {pattern} {list(x.shape)}: dimension {i} ({name}, {x.shape[i]}) is not divisible "
                                   f"by mesh axis {ax} ({size}); kept whole along {ax}")
    return list(seen.values())


def _skipped_line(skipped: list[tuple[str, str]]) -> str | None:
    if not skipped:
        return None
    by_why: dict[str, list[str]] = {}
    for n, why in skipped:
        by_why.setdefault(why, []).append(n)
    return "hf: skipped " + "; ".join(f"{', '.join(ns)} ({why})" for why, ns in by_why.items())


def read_params(source: str | Path, abstract: dict, take: Callable | None = None, log: Callable[[str], None] = main_log,
                *, mesh_rules: tuple | None = None) -> tuple[dict, dict[str, tuple]]:
    """An HF folder's parameters onto the shardings of `abstract` (ShapeDtypeStructs with shardings), with
    the contract of `checkpoint.load_params`: `take(key, shape_here, shape_there)` says per leaf whether
    to read it (shape_there None: the folder has no such parameter). Returns (the leaves read, as a
    nested dict; {key: shape in the folder}). A folder without an MLM head leaves the head out (the caller
    draws it), said in one line; skipped tensors are named in one line. `mesh_rules` = (mesh, rules,
    axes) adds the lines for dimensions the mesh does not divide."""
    d = hf_dir(source) or Path(source)
    h = read_config(d)
    w = Weights(d, log)
    plan = make_plan(h, w)
    by_key: dict[str, Any] = plan.by_key()
    flat_abs_keys = ["/".join(k) for k in flatten_dict(abstract)]
    if layout_of(flat_abs_keys) == "scanned":  # this model stacks its shared layers: read them layer by layer
        for s_key, parts in stack_map(by_key).items():
            by_key[s_key] = LayerStack(s_key, tuple(by_key.pop(p) for p in parts))
    there = {k: l.shape for k, l in by_key.items()}
    flat_abs = {"/".join(k): v for k, v in flatten_dict(abstract).items()}
    out: dict[str, jax.Array] = {}
    fresh_head = False
    for key, x in flat_abs.items():
        leaf = by_key.get(key)
        if leaf is None and key.startswith("mlm_head/") and not plan.has_head:
            fresh_head = True
            continue
        shape_there = None if leaf is None else leaf.shape
        if take is not None and not take(key, tuple(x.shape), shape_there):
            continue
        if leaf is None:
            raise UserError(f"{d}: the HF model has no parameter `{key}`; expected a model of the same architecture")
        if tuple(x.shape) != leaf.shape:
            raise UserError(f"{d}: `{key}` is {list(leaf.shape)} in the HF model but this model needs {list(x.shape)}; "
                            "expected the same architecture and vocabulary")
        out[key] = device_array(w, leaf, x.sharding, x.dtype)
    log(f"hf: {d} ({h.model_type}, {w.describe}): {sum(len(l.sources) for k, l in by_key.items() if k in out)} tensors "
        f"read into {len(out)} parameters, each device reading its own slice")
    if (line := _skipped_line(plan.skipped)) is not None:
        log(line)
    if fresh_head:
        log(f"hf: {d} has no masked-LM head ({', '.join(h.architectures) or h.model_type}): a fresh one is drawn")
    if mesh_rules is not None:
        mesh, rules, axes = mesh_rules
        sources = {l.key: l.sources[0] for l in plan.leaves}
        for line in undivided_lines({k: v for k, v in abstract.items()}, axes, mesh, rules, sources):
            log(line)
    return unflatten_dict(out, sep="/") if out else {}, there


# ----------------------------------------------------------------------------------------------
# Tokenizer


def _role_tokens(d: Path) -> dict[str, str]:
    """role -> token string from special_tokens_map.json, then tokenizer_config.json."""
    roles: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the map wins
        f = d / name
        if not f.is_file():
            continue
        try:
            raw = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{f}: not valid JSON; expected the tokenizer's special-token settings") from None
        for key in ("cls_token", "bos_token", "sep_token", "eos_token", "pad_token", "mask_token", "unk_token"):
            v = raw.get(key) if isinstance(raw, dict) else None
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                roles[key] = v
    return roles


def hf_tokenizer(d: Path, h: HFConfig, log: Callable[[str], None] = main_log):
    """(tokenizer, specials by role) of the folder; the vocabulary must fit the embedding matrix."""
    f = d / "tokenizer.json"
    if not f.is_file():
        raise UserError(f"{d}: no tokenizer.json; expected the model's fast tokenizer next to config.json "
                        "(AutoTokenizer.from_pretrained(...).save_pretrained(DIR) writes it)")
    tok = read_tokenizer_json(f)
    roles = _role_tokens(d)
    try:
        fallback = special_tokens(tok)
    except UserError:
        fallback = None
    ids: dict[str, int] = {}
    for role, keys in (("bos", ("cls_token", "bos_token")), ("eos", ("sep_token", "eos_token")), ("pad", ("pad_token",)),
                       ("mask", ("mask_token",)), ("unk", ("unk_token",))):
        token = next((roles[k] for k in keys if k in roles), None)
        if token is not None:
            i = tok.token_to_id(token)
            if i is None:
                raise UserError(f"{d}: the {keys[0]} `{token}` is not in tokenizer.json; expected the tokenizer's own specials")
            ids[role] = i
        elif fallback is not None:
            ids[role] = getattr(fallback, role)
        else:
            raise UserError(f"{d}: no {keys[0]} in special_tokens_map.json / tokenizer_config.json and no standard one "
                            "in tokenizer.json; expected the special tokens' roles")
    added = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    sp = SpecialTokens(**ids, all_ids=tuple(sorted(added | set(ids.values()))))
    if "pad_token_id" in h.raw and h.raw["pad_token_id"] is not None and h.raw["pad_token_id"] != sp.pad:
        raise UserError(f"{d}: config.json has pad_token_id {h.raw['pad_token_id']} but the tokenizer's pad token is id "
                        f"{sp.pad}; expected the same (RoBERTa positions start after it)")
    n = tok.get_vocab_size()
    if h.vocab_size < n:
        raise UserError(f"{d}: tokenizer.json has {n} tokens but the embedding matrix has {h.vocab_size} rows "
                        "(config.json vocab_size); expected rows >= tokenizer size: a vocabulary/tokenizer mismatch")
    if h.vocab_size > n:
        log(f"hf: the embedding matrix has {h.vocab_size} rows for {n} tokenizer tokens (a padded vocabulary); rows "
            f"{n}..{h.vocab_size - 1} are never produced by the tokenizer")
    return tok, sp


def check_tokenizer(source: str | Path, tokenizer_sha: str) -> None:
    """An HF model's token embeddings go with its own tokenizer.json only."""
    d = hf_dir(source) or Path(source)
    f = d / "tokenizer.json"
    if f.is_file() and sha(read_tokenizer_json(f).to_str()) != tokenizer_sha:
        raise UserError(f"{d}: its token embeddings go with its own tokenizer.json, not this run's tokenizer; expected "
                        "data.tokenizer.path unset (or that file), or init.reinit: [token_embedding]")


# ----------------------------------------------------------------------------------------------
# The imported model


@dataclass
class HFModel:
    """An HF encoder on the mesh: `params` (xlplastic's layout, sharded), the folder's tokenizer and
    specials, a full xlplastic `config` (model = the HF architecture), and forward passes."""

    path: Path
    hf: HFConfig
    config: Config
    tokenizer: Any
    specials: SpecialTokens
    params: dict
    mesh: Mesh
    graphdef: Any
    abstract_state: Any
    param_shardings: Any
    has_mlm_head: bool
    _fns: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def num_layers(self) -> int:
        return self.config.model.num_layers

    def merge(self, params) -> model_lib.Encoder:
        return model_lib.merge(self.graphdef, self.abstract_state, params)

    def _inputs(self, input_ids, attention_mask, token_type_ids):
        tok = np.asarray(input_ids).astype(np.int32)
        if tok.ndim != 2:
            raise UserError(f"input_ids has shape {list(tok.shape)}; expected [batch, tokens]")
        if attention_mask is None:
            lengths = np.full(tok.shape[0], tok.shape[1], np.int32)
        else:
            m = np.asarray(attention_mask).astype(bool)
            if m.shape != tok.shape:
                raise UserError(f"attention_mask {list(m.shape)} differs from input_ids {list(tok.shape)}; expected the same shape")
            lengths = m.sum(-1).astype(np.int32)
            if not np.array_equal(m, np.arange(tok.shape[1])[None, :] < lengths[:, None]):
                raise UserError("attention_mask is not right padding; expected each row's 1s first, then its 0s")
        types = np.zeros_like(tok) if token_type_ids is None else np.asarray(token_type_ids).astype(np.int32)
        rep = replicated(self.mesh)
        return [jax.device_put(a, rep) for a in (tok, lengths, types)]

    def _fn(self, what: str):
        if what not in self._fns:
            rules, rep = self.config.mesh.rules, replicated(self.mesh)

            def run(params, tok, lengths, types):
                with activation_rules(self.mesh, rules):
                    enc = self.merge(params)
                    h, hs = enc.encode(tok, lengths, types_BxT=types if self.config.model.type_vocab_size else None,
                                       return_hidden=True)
                    if what == "hidden":
                        return jnp.stack(hs).astype(jnp.float32)
                    return enc.mlm_logits(h)

            self._fns[what] = jax.jit(run, in_shardings=(self.param_shardings, rep, rep, rep), out_shardings=rep)
        return self._fns[what]

    def hidden_states(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        """float32 [layers + 1, batch, tokens, hidden]: the embedding output (after its LayerNorm), then every
        layer's output; padded positions are computed as HF computes them (attending to the real tokens)."""
        return np.asarray(self._fn("hidden")(self.params, *self._inputs(input_ids, attention_mask, token_type_ids)))

    def mlm_logits(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        """float32 [batch, tokens, vocabulary]: the masked-LM head at every position."""
        return np.asarray(self._fn("logits")(self.params, *self._inputs(input_ids, attention_mask, token_type_ids)))


def hf_run_config(h: HFConfig, mesh: Mesh, *, dtype: str = "float32", rules: dict | None = None) -> Config:
    """An xlplastic config for the HF model on `mesh` (evaluation: dropout off; analysis seq_len <= 128)."""
    usable = h.max_positions - h.position_offset
    raw = {"name": h.path.name or "hf", "model": {**h.model_fields(), "dropout": 0.0, "attention_dropout": 0.0,
                                                   "dtype": dtype, "param_dtype": dtype},
           "mesh": {"data": mesh.shape["data"], "fsdp": mesh.shape["fsdp"], "tensor": mesh.shape["tensor"],
                    **({"rules": rules} if rules else {})},
           "data": {"tokenizer": {"path": str(h.path / "tokenizer.json")}, "seq_len": min(128, usable)}}
    return validate(raw, source=f"{h.path}/config.json")


def load_hf(path: str | Path, mesh: Mesh | MeshConfig | None = None, *, devices: Sequence | None = None,
            dtype: str = "float32", rules: dict | None = None, log: Callable[[str], None] = main_log) -> HFModel:
    """An HF BERT / RoBERTa / XLM-R folder (or `hf:DIR`) onto `mesh` (a Mesh, a MeshConfig, or by default
    all devices data-parallel): parameters sharded by xlplastic's logical-axis rules, each device reading
    its own slice of the weights; the tokenizer from the same folder. Every problem is one UserError."""
    d = hf_dir(path) or Path(path).expanduser()
    h = read_config(d)
    tok, sp = hf_tokenizer(d, h, log)
    msh = mesh if isinstance(mesh, Mesh) else make_mesh(mesh or MeshConfig(data=-1), devices)
    cfg = hf_run_config(h, msh, dtype=dtype, rules=rules)
    abstract_model = nnx.eval_shape(lambda: model_lib.create(cfg.model, h.vocab_size, 0))
    graphdef, abstract_state = nnx.split(abstract_model, nnx.Param)
    abstract_params = nnx.to_pure_dict(abstract_state)
    axes = model_lib.logical_axes(abstract_model)
    shardings = tree_shardings(abstract_params, axes, msh, cfg.mesh.rules)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_params, shardings)
    log(f"hf: loading {d} onto mesh {describe(msh)}")
    params, _ = read_params(d, abstract, None, log, mesh_rules=(msh, cfg.mesh.rules, axes))
    flat = {"/".join(k): v for k, v in flatten_dict(params).items()} if params else {}
    missing = sorted(k for k in ("/".join(p) for p in flatten_dict(abstract_params)) if k not in flat)
    if missing:  # only the MLM head can be absent (read_params refuses anything else)
        flat_sh = {"/".join(k): v for k, v in flatten_dict(shardings).items()}
        flat.update(fresh_leaves(cfg, h.vocab_size, frozenset(missing), flat_sh))
    params = unflatten_dict(flat, sep="/")
    return HFModel(d, h, cfg, tok, sp, params, msh, graphdef, abstract_state, shardings, not missing)


def fresh_leaves(cfg: Config, vocab: int, keys: frozenset, shardings: dict, seed: int = 0) -> dict:
    """Only `keys` of a fresh draw of the model (XLA drops the rest of the program)."""

    def draw():
        m = model_lib.create(cfg.model, vocab, seed)
        flat = {"/".join(k): v for k, v in flatten_dict(nnx.to_pure_dict(nnx.state(m, nnx.Param))).items()}
        return {k: flat[k] for k in keys}

    return jax.jit(draw, out_shardings={k: shardings[k] for k in keys})()
