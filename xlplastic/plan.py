"""`xlplastic plan CONFIG --topology v5e-256`: will this config fit, and how fast could it run, on a TPU slice?

The config's own train step (and eval step), as `xlplastic run` builds them (`train.build_trainer`), is
compiled ahead of time for the target topology on this CPU host (MaxText's `train_compile.py` practice):
`jax.experimental.topologies.get_topology_desc` gives compile-only TPU devices (libtpu, the optional `tpu`
extra, compiles for them without a TPU attached), the mesh is made from them with the config's `mesh:`
section, and the jitted step is `.lower()`ed on abstract inputs (`jax.ShapeDtypeStruct` with shardings:
nothing is allocated) and `.compile()`d. From the compiled program:

* per-chip memory (`memory_analysis()`): parameters, optimizer state and batch (the shard bytes of each
  input), non-donated outputs, temporaries and program, against the chip's HBM; a program that does not fit
  is a result, not a crash: one line with the bytes needed and available, exit status 3;
* FLOPs per step and HBM bytes accessed (`cost_analysis()`, per chip), and the bytes of the collectives
  in the optimized HLO (what XLA says it communicates);
* a roofline: step time >= max(FLOPs / peak bf16 FLOP/s, bytes accessed / HBM bandwidth) per chip, and the
  MFU at that time with the model FLOPs of docs/benchmarks.md (so the MFU is an upper bound);
* the PartitionSpec of every parameter, by parameter group.

`--topology cpu-N` compiles the same code path for N devices of this host's CPU backend (no libtpu needed;
its memory figures are the CPU compiler's, and there is no published peak, so no step time): the suite
uses it to test everything but the TPU compiler itself. Chip figures: `CHIPS` (cited in docs/plan.md).

The golden sharding files (tests/golden/) come from `sharding_record`: the same trainer built on a
`jax.sharding.AbstractMesh` of the topology's shape, which needs no devices at all.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlplastic.errors import UserError

GiB = 2**30


class DoesNotFit(UserError):
    """The compiled program needs more memory per chip than the chip has: a planning result (exit 3)."""

    exit_code = 3


# ----------------------------------------------------------------------------------------------
# Chips and topologies


@dataclass(frozen=True)
class Chip:
    """Published per-chip figures (docs/plan.md cites each). `counts` is what the number in a slice's name
    counts: TensorCores (v4, v5p: 2 per chip, one JAX device per chip in megacore mode) or chips."""

    generation: str
    name: str
    peak_bf16_flops: float  # FLOP/s per chip
    hbm_bytes: int
    hbm_bandwidth: float  # bytes/s per chip
    ici_bandwidth: float | None  # bytes/s per chip, bidirectional, all links together
    counts: str  # "cores" or "chips"
    source: str


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", "TPU v4", 275e12, 32 * GiB, 1200e9, None, "cores", "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("v5e", "TPU v5e", 197e12, 16 * GiB, 819e9, 400e9, "chips", "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", "TPU v5p", 459e12, 95 * GiB, 2765e9, 1200e9, "cores", "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("v6e", "TPU v6e (Trillium)", 918e12, 32 * GiB, 1638e9, 800e9, "chips",
                "https://cloud.google.com/tpu/docs/v6e"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p", "trillium": "v6e"}

# Slice shapes (chips per dimension) as MaxText's accelerator_to_spec_map.py spells them, keyed by the
# number in the name. v4 and v5p names count TensorCores (v5p-128 = 64 chips, 4x4x4); v5e/v6e count chips.
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {
    8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8", 384: "4x4x12",
    512: "4x8x8", 640: "4x4x20", 768: "4x8x12", 896: "4x4x28", 1024: "8x8x8", 1152: "4x12x12",
    1280: "4x8x20", 1536: "8x8x12", 1792: "4x8x28", 1920: "4x12x20", 2048: "8x8x16", 2304: "8x12x12",
    2560: "8x8x20", 3072: "8x12x16", 3200: "4x20x20", 3456: "12x12x12", 3584: "8x8x28", 3840: "8x12x20",
    4096: "8x16x16", 4608: "12x12x16", 5120: "8x16x20", 6144: "12x16x16", 6400: "8x20x20",
    6912: "12x12x24", 7680: "12x16x20", 8192: "16x16x16", 9216: "12x16x24", 9600: "12x20x20",
    10240: "16x16x20", 12288: "16x16x24",
}
_V4_MAX = 4096  # v4 pods have 4096 chips; MaxText lists v4 names up to v4-4096
_LIBTPU_PREFIX = {"v4": "v4", "v5e": "v5e", "v5p": "v5", "v6e": "v6e"}
_ACCELERATOR_TYPE = {"v4": "v4-{n}", "v5e": "v5litepod-{n}", "v5p": "v5p-{n}", "v6e": "v6e-{n}"}


@dataclass(frozen=True)
class Topology:
    """A slice (times `slices`): `chips` per slice, one JAX device per chip. `chip` is None for `cpu-N`."""

    name: str  # normalised, e.g. "v5p-128" or "cpu-8"
    chip: Chip | None
    chips: int  # per slice
    slices: int = 1
    shape: str = ""  # chips per dimension, e.g. "4x4x4"
    chips_per_host_bounds: tuple[int, int, int] = (2, 2, 1)
    wrap: tuple[bool, bool, bool] = (False, False, False)

    @property
    def devices(self) -> int:
        return self.chips * self.slices

    @property
    def libtpu_name(self) -> str:  # what get_topology_desc wants, e.g. "v5:4x4x4"
        return f"{_LIBTPU_PREFIX[self.chip.generation]}:{self.shape}"

    @property
    def chip_config_name(self) -> str:
        return "megacore" if self.chip.counts == "cores" else "default"

    def describe(self) -> str:
        what = f"{self.chips} {self.chip.name} chip{'s' * (self.chips > 1)}" if self.chip else \
            f"{self.chips} host CPU device{'s' * (self.chips > 1)}"
        if self.chip and self.shape:
            what += f" ({self.shape})"
        return f"{self.name}: {what}" + (f" x {self.slices} slices (DCN)" if self.slices > 1 else "")


def topology_names() -> list[str]:
    out = [f"v4-{n}" for n in _SHAPES_3D if n <= _V4_MAX] + [f"v5p-{n}" for n in _SHAPES_3D]
    return out + [f"{g}-{n}" for g in ("v5e", "v6e") for n in _SHAPES_2D]


def parse_topology(name: str, slices: int = 1) -> Topology:
    """`v5e-256`, `v5p-128`, `v4-8`, `v6e-32` (MaxText's names; `v5litepod-N` = `v5e-N`), or `cpu-N`."""
    if slices < 1:
        raise UserError(f"--slices {slices}: expected a positive number of slices")
    m = re.fullmatch(r"\s*([A-Za-z0-9]+?)-(\d+)\s*", name or "")
    examples = "v5e-32, v5e-256, v5p-128, v4-8, v6e-64, or cpu-N for N host CPU devices"
    if not m:
        raise UserError(f"--topology {name!r}: expected GENERATION-SIZE as MaxText spells it, e.g. {examples}")
    gen, n = m.group(1).lower(), int(m.group(2))
    gen = ALIASES.get(gen, gen)
    if gen == "cpu":
        if n < 1:
            raise UserError(f"--topology {name!r}: expected cpu-N with N >= 1")
        return Topology(f"cpu-{n}", None, n, slices)
    if gen not in CHIPS:
        raise UserError(f"--topology {name!r}: unknown TPU generation {m.group(1)!r}; expected one of "
                        f"{', '.join(CHIPS)} ({examples})")
    chip = CHIPS[gen]
    table = _SHAPES_3D if chip.counts == "cores" else _SHAPES_2D
    limit = _V4_MAX if gen == "v4" else None
    if n not in table or (limit and n > limit):
        sizes = [k for k in table if not limit or k <= limit]
        unit = "TensorCores (2 per chip)" if chip.counts == "cores" else "chips"
        raise UserError(f"--topology {name!r}: {gen} slices are named by their {unit}; expected one of "
                        f"{', '.join(f'{gen}-{k}' for k in sizes[:12])}, ...")
    shape = table[n]
    chips = math.prod(int(d) for d in shape.split("x"))
    if chip.counts == "cores":
        wrap = (True, True, True) if chips >= 64 else (False, False, False)
    else:
        wrap = {128: (False, True, False), 256: (True, True, False)}.get(chips, (False, False, False))
    bounds = (1, 1, 1) if chips == 1 else (2, 2, 1)
    return Topology(f"{gen}-{n}", chip, chips, slices, shape, bounds, wrap)


def libtpu_path() -> str | None:
    """Where libtpu is (the `tpu` extra, or TPU_LIBRARY_PATH), or None; imports nothing, probes no device."""
    env = os.environ.get("TPU_LIBRARY_PATH")
    if env:
        return env if Path(env).is_file() else None
    spec = importlib.util.find_spec("libtpu")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        so = Path(folder) / "libtpu.so"
        if so.is_file():
            return str(so)
    return None


# ----------------------------------------------------------------------------------------------
# Pure arithmetic: bytes, collectives, OOM messages, roofline, model FLOPs


def _fmt_units(n: float | None, units, spec: str, base: str) -> str:
    """`n` in the largest of `units` ((name, size), largest first) it reaches; `base` formats the rest."""
    if n is None:
        return "n/a"
    for unit, size in units:
        if abs(n) >= size:
            return f"{n / size:{spec}} {unit}"
    return base.format(n)


def fmt_bytes(n: float | None) -> str:
    return _fmt_units(n, (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)), ".2f", "{:.0f} B")


def fmt_flops(n: float | None) -> str:
    return _fmt_units(n, (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)), ".3g", "{:.3g} FLOP")


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
                "ragged-all-to-all")
_HLO_OP = re.compile(r"=\s*(.*?)\s+(" + "|".join(_COLLECTIVES) + r")(-start)?\(")
_HLO_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\]")


def _array_bytes(text: str) -> list[int]:
    out = []
    for dtype, dims in _HLO_ARRAY.findall(text):
        if dtype in _DTYPE_BYTES:
            out.append(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d))
    return out


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Per-device bytes each kind of collective produces in an optimized HLO module: the result shape of
    every `all-reduce`, `all-gather`, `reduce-scatter`, `all-to-all` and `collective-permute` (the `-start`
    half of async pairs, whose tuple also holds the operands). Shapes carry TPU layouts such as
    `{1,0:T(8,128)(2,1)}`. A collective inside a loop body counts once (train.grad_accum > 1 runs it
    grad_accum times)."""
    out: dict[str, int] = {}
    for line in hlo_text.splitlines():
        m = _HLO_OP.search(line)
        if not m:
            continue
        sizes = _array_bytes(m.group(1))
        if not sizes:
            continue
        if m.group(3) and m.group(2) == "all-gather":  # (operands..., results...)
            n = sum(sizes[len(sizes) // 2:])
        elif m.group(3) and m.group(2) == "collective-permute":  # (operand, result, u32[] contexts)
            n = max(sizes)
        else:  # a result, or a tuple of results (combined collectives)
            n = sum(sizes)
        out[m.group(2)] = out.get(m.group(2), 0) + n
    return out


_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KiB": 2**10, "M": 2**20, "MB": 2**20, "MiB": 2**20,
          "G": GiB, "GB": GiB, "GiB": GiB, "T": 2**40, "TB": 2**40, "TiB": 2**40}
_OOM_NEED = re.compile(r"(?:required|requirement|need(?:s|ed)?|used)\D*?([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B?|B)?\b", re.I)
_OOM_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B?|B)?\b")


def parse_oom(message: str) -> tuple[int | None, int | None]:
    """(bytes needed, bytes available) from XLA's RESOURCE_EXHAUSTED message, e.g. `the total memory
    required for HLO temporaries (80.00G) exceeds available HBM (15.75G)`; None for what it does not say."""
    def size(m):
        return int(float(m.group(1)) * _UNITS.get(m.group(2) or "", 1)) if m else None

    head, _, tail = message.partition("exceeds")
    need = size(_OOM_NEED.search(head))
    avail = size(_OOM_SIZE.search(tail)) if tail else None
    return need, avail


def roofline(flops_per_chip: float | None, bytes_per_chip: float | None, chip: Chip | None,
             comm_bytes_per_chip: float | None = None) -> dict[str, Any]:
    """Lower bounds on the step time per chip: compute = FLOPs / peak bf16 FLOP/s, memory = HBM bytes
    accessed / HBM bandwidth; step = the larger (the roofline). The collectives' time over ICI (bytes /
    bidirectional ICI bandwidth) is reported beside it, not in the max: XLA overlaps most of it."""
    if chip is None or flops_per_chip is None:
        return {"compute_s": None, "memory_s": None, "step_s": None, "bound": None, "ici_s": None}
    compute = flops_per_chip / chip.peak_bf16_flops
    memory = (bytes_per_chip or 0.0) / chip.hbm_bandwidth
    ici = comm_bytes_per_chip / chip.ici_bandwidth if comm_bytes_per_chip and chip.ici_bandwidth else None
    return {"compute_s": compute, "memory_s": memory, "step_s": max(compute, memory),
            "bound": "compute" if compute >= memory else "HBM bandwidth", "ici_s": ici}


def model_flops_per_step(cfg, vocab_size: int) -> dict[str, float]:
    """The documented MLM formula (docs/benchmarks.md, xlplastic/bench/train_bench.py) for one step of
    batch_size x seq_len tokens: `model` counts the head at m = mask_prob (what MFU uses), `executed` at
    the ceil(mask_prob * T) / T padded predicted positions the step actually projects. Remat (model.remat:
    block) re-runs each block's forward: executed body and attention x 4/3."""
    from xlplastic.bench.train_bench import flops_per_token
    from xlplastic.masking import max_predictions

    m, d = cfg.model, cfg.data
    tokens = cfg.train.batch_size * d.seq_len
    args = (m.num_layers, m.hidden_size, m.mlp_dim, vocab_size, d.seq_len)
    model = flops_per_token(*args, d.mask_prob)
    executed = flops_per_token(*args, max_predictions(d.seq_len, d.mask_prob) / d.seq_len)
    if m.remat == "block":
        executed = {**executed, "total": executed["total"] + (executed["body"] + executed["attention"]) / 3}
    elif m.remat == "dots":  # the projections' outputs are kept: only the attention products are re-run
        executed = {**executed, "total": executed["total"] + executed["attention"] / 3}
    return {"model": model["total"] * tokens, "executed": executed["total"] * tokens, "tokens": tokens}


def scan_count_scale(cfg, vocab_size: int) -> float:
    """XLA's cost analysis counts a loop body once, so a scanned model (`model.scan_layers`) is counted as
    if it had one shared layer. The plan scales its FLOPs and bytes by the formula's ratio between the real
    depth and that one-layer model (1.0 when the layers are unrolled)."""
    m = cfg.model
    shared = m.num_layers - m.separate.layers
    if not m.scan_layers or shared <= 1:
        return 1.0
    one = cfg.model_copy(update={"model": m.model_copy(update={"num_layers": m.separate.layers + 1})})
    return model_flops_per_step(cfg, vocab_size)["executed"] / model_flops_per_step(one, vocab_size)["executed"]


# ----------------------------------------------------------------------------------------------
# The model as `xlplastic run` builds it


SPECIAL_IDS = (0, 1, 2, 3, 4)  # RoBERTa convention: <s> <pad> </s> <unk> <mask>


def plan_vocab_size(cfg) -> tuple[int, str]:
    """The vocabulary the plan compiles with, and where it came from (no tokenizer is trained)."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "model.vocab_size"
    tok = cfg.data.tokenizer
    if tok.per_language:
        n = len(cfg.languages())
        return tok.vocab_size * n, f"data.tokenizer.vocab_size x {n} languages (per_language; an upper bound)"
    return tok.vocab_size, "data.tokenizer.vocab_size (the trained tokenizer may be smaller)"


def make_trainer(cfg, mesh, vocab_size: int):
    """`train.build_trainer` for the config's masked-LM step on `mesh` (a Mesh or an AbstractMesh)."""
    import numpy as np

    from xlplastic.train import Specials, build_trainer, mlm_objective

    specials = Specials(pad=1, mask=4, all_ids=SPECIAL_IDS)
    objective = None
    if cfg.data.random_within_language:  # a table of each language's ids (its shape is what matters)
        ids = [np.arange(len(SPECIAL_IDS), vocab_size, dtype=np.int32)] * len(cfg.languages())
        objective = mlm_objective(cfg, vocab_size, specials, ids)
    return build_trainer(cfg, mesh, vocab_size, specials, objective)


def _abstract(tree, shardings):
    import jax

    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_state(trainer):
    """{step, params, opt_state} as ShapeDtypeStructs carrying the trainer's shardings (no arrays)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    params = nnx.to_pure_dict(trainer.abstract_state)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    opt = jax.eval_shape(trainer.tx.init, params)
    shape = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params, "opt_state": opt}
    return _abstract(shape, trainer.state_shardings)


def abstract_batch(cfg, mesh) -> dict:
    import jax
    import jax.numpy as jnp

    from xlplastic.sharding import batch_sharding

    B, T = cfg.train.batch_size, cfg.data.seq_len
    out = {"tokens": jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=batch_sharding(mesh, 2))}
    if cfg.batch_has_language:
        out["lang"] = jax.ShapeDtypeStruct((B,), jnp.int32, sharding=batch_sharding(mesh, 1))
    return out


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard of each leaf)."""
    import jax
    import numpy as np

    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(math.prod(shape)) * np.dtype(x.dtype).itemsize
    return total


def spec_str(spec) -> str:
    parts = []
    for e in spec:
        if e is None:
            parts.append("None")
        elif isinstance(e, str):
            parts.append(repr(e))
        else:
            parts.append("(" + ", ".join(repr(a) for a in e) + ")")
    return "P(" + ", ".join(parts) + ")"


def parameter_shardings(trainer) -> list[dict[str, Any]]:
    """One row per parameter: path, group, shape, dtype, logical axes, PartitionSpec, bytes per device."""
    import jax
    import numpy as np

    from xlplastic.groups import path_str

    state = abstract_state(trainer)
    rows = []
    flat_axes = {path_str(p): a for p, a in jax.tree_util.tree_flatten_with_path(
        trainer.axes, is_leaf=lambda a: isinstance(a, tuple) and all(isinstance(s, (str, type(None))) for s in a))[0]}
    flat_labels = {path_str(p): l for p, l in jax.tree_util.tree_leaves_with_path(trainer.labels)}
    for path, x in jax.tree_util.tree_leaves_with_path(state["params"]):
        key = path_str(path)
        shard = x.sharding.shard_shape(x.shape)
        rows.append({
            "path": key,
            "group": flat_labels.get(key),
            "shape": list(x.shape),
            "dtype": str(np.dtype(x.dtype)),
            "axes": list(flat_axes.get(key, ())),
            "spec": spec_str(x.sharding.spec),
            "bytes_per_device": int(math.prod(shard)) * np.dtype(x.dtype).itemsize,
        })
    return rows


def group_summary(rows: list[dict]) -> list[dict]:
    """Parameters folded by group and by path with layer numbers as `*` (layer_0..11 -> layer_*)."""
    seen: dict[tuple, dict] = {}
    for r in rows:
        pattern = re.sub(r"layer_\d+", "layer_*", r["path"])
        k = (r["group"], pattern, tuple(r["shape"]), r["spec"])
        if k not in seen:
            seen[k] = {"group": r["group"], "path": pattern, "shape": r["shape"], "spec": r["spec"], "count": 0,
                       "bytes_per_device": 0}
        seen[k]["count"] += 1
        seen[k]["bytes_per_device"] += r["bytes_per_device"]
    from xlplastic.groups import GROUPS, base_group

    order = {g: i for i, g in enumerate(GROUPS)}
    return sorted(seen.values(), key=lambda g: (order.get(base_group(g["group"] or ""), len(order)), g["group"] or "",
                                                g["path"]))


def sharding_record(cfg, topology: Topology) -> dict[str, Any]:
    """The golden sharding record: every parameter's PartitionSpec and per-device bytes for the config on
    a mesh of the topology's shape, from abstract shapes alone (an AbstractMesh: no devices, no libtpu)."""
    from jax.sharding import AbstractMesh, AxisType

    from xlplastic.sharding import AXES, batch_sharding, mesh_shape

    shape = mesh_shape(cfg.mesh, topology.devices)
    mesh = AbstractMesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))
    vocab, source = plan_vocab_size(cfg)
    trainer = make_trainer(cfg, mesh, vocab)
    state = abstract_state(trainer)
    return {
        "config": cfg.name,
        "topology": topology.name,
        "devices": topology.devices,
        "mesh": dict(zip(AXES, shape)),
        "vocab_size": vocab,
        "vocab_source": source,
        "batch_spec": spec_str(batch_sharding(mesh, 2).spec),
        "bytes_per_device": {"params": shard_bytes(state["params"]), "opt_state": shard_bytes(state["opt_state"]),
                             "state": shard_bytes(state)},
        "parameters": parameter_shardings(trainer),
    }


# ----------------------------------------------------------------------------------------------
# Devices and compilation


def _quiet_libtpu_env(topology: Topology) -> None:
    """libtpu, loaded on a machine without TPUs, asks for the accelerator type and worker hosts on stderr;
    telling it (without overriding what the user set) keeps the output to the plan."""
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", _ACCELERATOR_TYPE[topology.chip.generation].format(n=topology.name.split("-")[1]))
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_WORKER_ID", "0")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # libtpu takes a machine-wide lock for the devices it drives; compile-only devices drive none, so
    # several plans (or a plan beside a test run) may load it at once
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(topology: Topology) -> list:
    """Compile-only TPU devices (libtpu) for a TPU topology, or the first N host CPU devices for cpu-N."""
    import jax
    from jax._src import xla_bridge

    initialized = xla_bridge.backends_are_initialized()
    if topology.chip is None:
        if not initialized:  # a fresh process (the CLI): N CPU devices; a process that set more keeps them
            if not jax.config.jax_platforms:
                jax.config.update("jax_platforms", "cpu")
            if jax.config.jax_num_cpu_devices < topology.devices:
                jax.config.update("jax_num_cpu_devices", topology.devices)
        devices = jax.devices("cpu")
        if len(devices) < topology.devices:
            raise UserError(f"--topology {topology.name}: this process has {len(devices)} CPU devices; expected "
                            f"at least {topology.devices} (set it before JAX starts: run `xlplastic plan` on its own)")
        return devices[: topology.devices]
    path = libtpu_path()
    if path is None:
        raise UserError(f"--topology {topology.name}: compiling for a TPU needs libtpu, which is not installed; "
                        "expected `pip install -e '.[tpu]'` (or TPU_LIBRARY_PATH=/path/to/libtpu.so)")
    os.environ.setdefault("TPU_LIBRARY_PATH", path)
    _quiet_libtpu_env(topology)
    if not initialized and not jax.config.jax_platforms:  # the plan needs no attached accelerator: probe none
        jax.config.update("jax_platforms", "cpu")
    # A compile-only executable cannot be loaded back from the persistent compilation cache (JAX warns and
    # recompiles), and a plan's compile times should be real: no cache for TPU plans
    jax.config.update("jax_enable_compilation_cache", False)
    from jax.experimental.topologies import get_topology_desc

    try:
        desc = get_topology_desc(platform="tpu", topology_name=topology.libtpu_name,
                                 chip_config_name=topology.chip_config_name,
                                 chips_per_host_bounds=topology.chips_per_host_bounds,
                                 num_slices=topology.slices, wrap=topology.wrap)
    except Exception as e:  # libtpu's own words on a topology it does not accept
        raise UserError(f"--topology {topology.name}: libtpu could not describe {topology.libtpu_name} x "
                        f"{topology.slices}: {str(e).splitlines()[0]}") from None
    return list(desc.devices)


def plan_mesh(cfg, topology: Topology, devices):
    """The run's mesh (`sharding.make_mesh`) on the topology's devices; with several slices the `data` axis
    spans the slices over DCN (a hybrid mesh: ICI inside a slice), MaxText's multi-slice layout."""
    from jax.sharding import AxisType, Mesh

    from xlplastic.sharding import AXES, make_mesh, mesh_shape

    if topology.slices == 1:
        return make_mesh(cfg.mesh, devices)
    from jax.experimental import mesh_utils

    data, fsdp, tensor = mesh_shape(cfg.mesh, len(devices))
    if data % topology.slices:
        raise UserError(f"--slices {topology.slices}: mesh.data is {data}; expected a multiple of the number of "
                        "slices (the data axis spans slices over DCN; set mesh.data to -1 or a multiple)")
    grid = mesh_utils.create_hybrid_device_mesh((data // topology.slices, fsdp, tensor), (topology.slices, 1, 1),
                                                devices)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * 3)


@dataclass
class Compiled:
    seconds: float
    memory: dict[str, int] | None = None
    cost: dict[str, float] = field(default_factory=dict)
    collectives: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # RESOURCE_EXHAUSTED message when it does not fit


def _compile(fn, *args) -> Compiled:
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    try:
        compiled = lowered.compile()
    except Exception as e:
        msg = str(e)
        if "RESOURCE_EXHAUSTED" in msg or "exceeds available" in msg or "Ran out of memory" in msg:
            first = next((l for l in msg.splitlines() if l.strip()), msg)
            return Compiled(time.perf_counter() - t0, error=first.strip())
        raise
    seconds = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    memory = None
    if ma is not None:
        memory = {k: int(getattr(ma, k, 0) or 0) for k in (
            "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")}
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    cost = {k: float(v) for k, v in (cost or {}).items() if k in ("flops", "bytes accessed", "transcendentals",
                                                                   "optimal_seconds")}
    try:
        coll = collective_bytes(compiled.as_text())
    except Exception:  # some backends keep no text
        coll = {}
    return Compiled(seconds, memory, cost, coll)


def _memory_rows(c: Compiled, state_parts: dict[str, int], batch: int) -> dict[str, int] | None:
    if c.memory is None:  # did not compile (out of memory): what the inputs alone take is still known
        return {**state_parts, "batch": batch} if c.error else None
    m = c.memory
    outputs = max(0, m["output_size_in_bytes"] - m["alias_size_in_bytes"])
    total = m["argument_size_in_bytes"] + outputs + m["temp_size_in_bytes"] + m["generated_code_size_in_bytes"]
    return {**state_parts, "batch": batch, "arguments": m["argument_size_in_bytes"], "outputs_not_donated": outputs,
            "temporaries": m["temp_size_in_bytes"], "program": m["generated_code_size_in_bytes"], "total": total}


def host_memory_per_device(n: int) -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // n
    except (ValueError, OSError, AttributeError):
        return None


def plan(cfg, topology: Topology, *, with_eval: bool = True, memory_bytes: int | None = None) -> dict[str, Any]:
    """Compiles the config's train (and eval) step for the topology; returns the plan as a JSON-able dict
    (`fits` False when a step needs more than `memory_bytes` per device: the chip's HBM unless given)."""
    import jax

    from xlplastic.sharding import check_batch, describe

    devices = topology_devices(topology)
    mesh = plan_mesh(cfg, topology, devices)
    check_batch(cfg.train.batch_size, mesh, cfg.train.grad_accum)
    vocab, vocab_source = plan_vocab_size(cfg)
    t0 = time.perf_counter()
    trainer = make_trainer(cfg, mesh, vocab)
    state = abstract_state(trainer)
    batch = abstract_batch(cfg, mesh)
    parts = {"params": shard_bytes(state["params"]), "opt_state": shard_bytes(state["opt_state"]),
             "step_counter": shard_bytes(state["step"])}
    batch_bytes = shard_bytes(batch)
    train = _compile(trainer.step, state, batch)
    ev = _compile(trainer.eval_step, state["params"], batch) if with_eval else None
    available = memory_bytes or (topology.chip.hbm_bytes if topology.chip else host_memory_per_device(topology.devices))

    steps = {"train": train} | ({"eval": ev} if ev is not None else {})
    reported = [a for c in steps.values() if c.error for a in [parse_oom(c.error)[1]] if a]
    if reported and not memory_bytes:  # what XLA says the chip has for programs (v5e: 15.75 of 16 GiB)
        available = min(reported)
    out_steps: dict[str, Any] = {}
    fits, needed = True, 0
    for name, c in steps.items():
        eval_parts = {"params": parts["params"]} if name == "eval" else parts
        rows = _memory_rows(c, eval_parts, batch_bytes)
        entry: dict[str, Any] = {"compile_s": round(c.seconds, 2), "memory_per_device": rows}
        if c.error is not None:
            need, avail = parse_oom(c.error)
            if need is not None and "temporaries" in c.error:  # XLA names the temporaries alone: add the inputs
                need += sum(rows.values()) if rows else 0
            entry.update(fits=False, error=c.error, needed=need, available=avail or available)
            fits = False
            needed = max(needed, need or 0)
            out_steps[name] = entry
            continue
        total = rows.get("total") if rows else None
        ok = total is None or available is None or total <= available
        fits = fits and ok
        needed = max(needed, total or 0)
        flops = c.cost.get("flops")
        accessed = c.cost.get("bytes accessed")
        # XLA's cost analysis counts a loop body once: with grad_accum A the train step's micro-batch loop
        # (nearly all of its work) runs A times, so its figures are scaled by A (the optimizer update, which
        # runs once, is then over-counted: < 1% for these models)
        # scanned layers: FLOPs scaled to the real depth; bytes only by the micro-batch loop (the optimizer
        # update over all layers is outside the scan, so scaling it too would over-count): a lower bound
        accum = cfg.train.grad_accum if name == "train" else 1
        loops = accum * scan_count_scale(cfg, vocab)
        if loops != 1:
            flops = flops * loops if flops is not None else None
            accessed = accessed * accum if accessed is not None else None
        comm = sum(c.collectives.values()) if c.collectives else 0
        entry.update(
            fits=ok,
            xla_loop_scale=loops,
            flops_per_device=flops,
            flops_per_step=flops * topology.devices if flops is not None else None,
            bytes_accessed_per_device=accessed,
            bytes_accessed_is_lower_bound=bool(cfg.model.scan_layers),
            transcendentals_per_device=c.cost.get("transcendentals"),
            xla_optimal_seconds=c.cost.get("optimal_seconds") if (c.cost.get("optimal_seconds") or 0) > 0 else None,
            collective_bytes_per_device=c.collectives,
            roofline=roofline(flops, accessed, topology.chip, comm or None),
        )
        out_steps[name] = entry

    formula = model_flops_per_step(cfg, vocab)
    tr = out_steps["train"]
    if tr.get("flops_per_step"):
        tr["flops_vs_formula"] = tr["flops_per_step"] / formula["executed"]
        step_s = tr["roofline"]["step_s"]
        if step_s and topology.chip:
            peak = topology.devices * topology.chip.peak_bf16_flops
            tr["mfu_at_roofline"] = formula["model"] / (step_s * peak)
            tr["tokens_per_s_at_roofline"] = formula["tokens"] / step_s
    chip = topology.chip
    return {
        "config": cfg.name,
        "topology": topology.name,
        "topology_description": topology.describe(),
        "slices": topology.slices,
        "devices": topology.devices,
        "device_kind": getattr(devices[0], "device_kind", None),
        "chip": None if chip is None else {
            "name": chip.name, "peak_bf16_flops": chip.peak_bf16_flops, "hbm_bytes": chip.hbm_bytes,
            "hbm_bandwidth": chip.hbm_bandwidth, "ici_bandwidth": chip.ici_bandwidth, "source": chip.source},
        "memory_available_per_device": available,
        "mesh": dict(mesh.shape),
        "mesh_description": describe(mesh),
        "vocab_size": vocab,
        "vocab_source": vocab_source,
        "batch": [cfg.train.batch_size, cfg.data.seq_len],
        "grad_accum": cfg.train.grad_accum,
        "dtype": cfg.model.dtype,
        "remat": cfg.model.remat,
        "num_params": sum(int(math.prod(x.shape)) for x in jax.tree.leaves(state["params"])),
        "formula_flops_per_step": formula,
        "steps": out_steps,
        "fits": fits,
        "needed_per_device": needed,
        "parameter_groups": group_summary(parameter_shardings(trainer)),
        "wall_s": round(time.perf_counter() - t0, 2),
    }


# ----------------------------------------------------------------------------------------------
# Report


def _table(rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)).rstrip()
            for r in rows]


def format_report(p: dict[str, Any]) -> str:
    lines = [f"plan: {p['config']} on {p['topology_description']}, mesh {p['mesh_description']}",
             f"model: {p['num_params'] / 1e6:.1f}M parameters, vocabulary {p['vocab_size']} ({p['vocab_source']}), "
             f"batch {p['batch'][0]} x {p['batch'][1]}"
             + (f" (grad_accum {p['grad_accum']})" if p["grad_accum"] > 1 else "")
             + f", {p['dtype']} compute, remat {p['remat']}"]
    if p.get("note"):
        lines.append(f"note: {p['note']}")
    steps = p["steps"]
    lines.append("compiled: " + ", ".join(
        f"{k} step {'ran out of memory after' if v.get('error') else 'in'} {v['compile_s']:.1f} s" for k, v in steps.items()))
    lines.append("")
    names = list(steps)
    labels = [("params", "parameters"), ("opt_state", "optimizer state"), ("batch", "batch"),
              ("outputs_not_donated", "outputs (not donated)"), ("temporaries", "temporaries"),
              ("program", "program"), ("total", "total")]
    rows = [["per device (chip)"] + [f"{n} step" for n in names]]
    state_keys = {"opt_state"}  # not an input of the eval step
    for key, label in labels:
        cells = []
        for n in names:
            mem = steps[n].get("memory_per_device")
            if mem and key in mem:
                cells.append(fmt_bytes(mem[key]))
            elif key in state_keys or not mem:
                cells.append("-" if mem else "n/a")
            else:
                cells.append("n/a")
        rows.append([label] + cells)
    chip = p["chip"]
    avail = p["memory_available_per_device"]
    where = f"HBM ({chip['name']})" if chip else "memory budget (host RAM / devices unless --hbm-gib)"
    rows.append([where] + [fmt_bytes(avail) for n in names])
    fit_cells = []
    for n in names:
        s = steps[n]
        mem = s.get("memory_per_device")
        if s.get("error"):
            fit_cells.append("NO (compiler: out of memory)")
        elif mem and avail and "total" in mem:
            fit_cells.append(("yes" if s["fits"] else "NO") + f" ({mem['total'] / avail:.0%})")
        else:
            fit_cells.append("yes" if s["fits"] else "NO")
    rows.append(["fits"] + fit_cells)
    lines += _table(rows, right=set(range(1, len(names) + 1)))
    lines.append("")
    tr = steps["train"]
    if tr.get("flops_per_step") is not None:
        f = p["formula_flops_per_step"]
        lines.append(f"FLOPs per train step: {fmt_flops(tr['flops_per_step'])} (XLA cost analysis: "
                     f"{fmt_flops(tr['flops_per_device'])} per device x {p['devices']}"
                     + (f", its loops (micro-batches, scanned layers) scaled x{tr['xla_loop_scale']:.2f}"
                        if tr.get("xla_loop_scale", 1) != 1 else "")
                     + "); documented formula "
                     f"(docs/benchmarks.md): {fmt_flops(f['executed'])} executed, {fmt_flops(f['model'])} model; "
                     f"XLA / executed = {tr['flops_vs_formula']:.3f}")
        lines.append(f"HBM bytes accessed per device: {fmt_bytes(tr.get('bytes_accessed_per_device'))}")
        coll = tr.get("collective_bytes_per_device") or {}
        if coll:
            lines.append("communicated per device (collectives in the optimized HLO): "
                         + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in coll.items())
                         + f"; total {fmt_bytes(sum(coll.values()))}")
        else:
            lines.append("communicated per device: no collectives in the optimized HLO")
        r = tr["roofline"]
        if r["step_s"] is not None:
            lines.append(f"roofline per step: compute {fmt_seconds(r['compute_s'])} (at {chip['peak_bf16_flops'] / 1e12:g} "
                         f"TFLOP/s bf16), HBM {fmt_seconds(r['memory_s'])} (at {chip['hbm_bandwidth'] / 1e9:g} GB/s) -> "
                         f">= {fmt_seconds(r['step_s'])}, {r['bound']}-bound"
                         + (f"; collectives over ICI >= {fmt_seconds(r['ici_s'])} (not in the max)" if r["ici_s"] else "")
                         + (f"; XLA's own estimate {fmt_seconds(tr['xla_optimal_seconds'])}"
                            if tr.get("xla_optimal_seconds") else ""))
            lines.append(f"MFU at the roofline step time: {tr['mfu_at_roofline']:.1%} (an upper bound), "
                         f"{tr['tokens_per_s_at_roofline']:,.0f} tokens/s"
                         + (f" (against the bf16 peak; this config computes in {p['dtype']})" if p["dtype"] != "bfloat16" else ""))
        else:
            lines.append("roofline: n/a (no published peak FLOP/s or bandwidth for a host CPU)")
    lines.append("")
    lines.append(f"parameter sharding on mesh {p['mesh_description']} (per device):")
    rows = [["group", "parameter", "shape", "PartitionSpec", "count", "bytes/device"]]
    for g in p["parameter_groups"]:
        rows.append([g["group"] or "?", g["path"], "x".join(map(str, g["shape"])), g["spec"], str(g["count"]),
                     fmt_bytes(g["bytes_per_device"])])
    lines += _table(rows, right={4, 5})
    return "\n".join(lines)


def does_not_fit_message(p: dict[str, Any]) -> str:
    """The one line for exit status 3."""
    bad = [(n, s) for n, s in p["steps"].items() if not s["fits"]]
    name, s = bad[0]
    need = s.get("needed") or (s.get("memory_per_device") or {}).get("total") or 0
    avail = s.get("available") or p["memory_available_per_device"]
    where = f"a {p['chip']['name']} chip" if p["chip"] else "a device"
    how = " (XLA: " + s["error"].split("RESOURCE_EXHAUSTED:")[-1].strip() + ")" if s.get("error") else ""
    least = "at least " if s.get("error") else ""
    if s.get("error") and "temporaries" in s["error"]:
        least = "at least (XLA's temporaries + parameters, optimizer state, batch) "
    return (f"{p['config']} does not fit on {p['topology']}: the {name} step needs {least}{fmt_bytes(need)} "
            f"({need} bytes) per device, {where} has {fmt_bytes(avail)} ({avail} bytes){how}; expected "
            "model.remat: block, more train.grad_accum, a smaller train.batch_size, more mesh.fsdp, or a larger topology")


def run_plan(config: str, topology: str, *, slices: int = 1, overrides: list[str] | None = None,
             json_path: str | None = None, with_eval: bool = True, hbm_gib: float | None = None) -> int:
    """`xlplastic plan`: prints the report (stdout); raises DoesNotFit (exit 3) after it when a step does not fit."""
    from xlplastic.bench.common import check_json_path, write_json
    from xlplastic.config import load_config

    check_json_path(json_path)
    topo = parse_topology(topology, slices)
    cfg = load_config(config, overrides, run=False)
    if hbm_gib is not None and hbm_gib <= 0:
        raise UserError(f"--hbm-gib {hbm_gib}: expected a positive number of GiB")
    result = plan(cfg, topo, with_eval=with_eval, memory_bytes=int(hbm_gib * GiB) if hbm_gib else None)
    if cfg.task is not None or cfg.pipeline is not None:
        result["note"] = ("planned the masked-LM pretraining step; task fine-tuning (task:) and the pipeline's other "
                          "stages are not planned")
    print(format_report(result), flush=True)
    write_json(json_path, result)
    if not result["fits"]:
        raise DoesNotFit(does_not_fit_message(result))
    return 0
