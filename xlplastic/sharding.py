"""Device mesh (data x fsdp x tensor) and logical-axis -> mesh-axis rules.

Parameters name their dimensions logically (`vocab`, `embed`, `heads`, `mlp`, ...); one rule table from the
config maps each logical name to mesh axes. A mesh axis is used at most once per array (the first dimension
that asks for it wins), and a dimension is only sharded when its size divides evenly, so tiny test models
and odd vocabularies never fail to shard, they just stay replicated along that axis.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from xlplastic.config import MeshConfig
from xlplastic.errors import UserError
from xlplastic.layout import STACK

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("xlplastic_sharding", default=None)


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sum(s == -1 for s in sizes) > 1:
        raise UserError(f"mesh: at most one of data/fsdp/tensor may be -1, got {sizes}")
    if any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"mesh: sizes must be positive or -1, got data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise UserError(f"mesh: {num_devices} devices are not divisible by the fixed axes' product {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise UserError(
            f"mesh: data*fsdp*tensor = {math.prod(sizes)} but {num_devices} devices are present; "
            "set one axis to -1 to take the rest"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig, devices: Sequence | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(cfg, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(axes: Sequence[str | None], rules: dict[str, list[str]], shape=None, mesh: Mesh | None = None) -> P:
    """PartitionSpec for logical axes; skips mesh axes already used or that don't divide the dimension."""
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        mesh_axes = []
        for ax in rules.get(name, []) if name else []:
            if ax in used:
                continue
            size = mesh.shape[ax] if mesh is not None else 1
            if shape is not None and size > 1:
                current = math.prod(mesh.shape[a] for a in mesh_axes) if mesh is not None else 1
                if shape[i] % (current * size):
                    continue
            mesh_axes.append(ax)
        used.update(mesh_axes)
        out.append(tuple(mesh_axes) if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None))
    return P(*out)


def fsdp_fallback(spec: P, shape, mesh: Mesh, axis: str = "fsdp", keep_whole: Sequence[int] = ()) -> P:
    """Adds the fsdp axis to a parameter whose rules left it whole along fsdp (biases over `mlp`/`heads`/
    `vocab`, the head's `hidden` vector, ...): it splits the largest dimension that still divides evenly.

    Without this, every such leaf (and its Adam moments) is a full copy on each fsdp device, so per-device
    state exceeds 1/fsdp of the total by their size: small for wide models, several percent for narrow ones.
    Dimensions in `keep_whole` are never split (a scanned stack's `layers` axis: the scan slices it).
    """
    size = mesh.shape.get(axis, 1)
    entries = list(spec) + [None] * (len(shape) - len(spec))
    used = {a for e in entries for a in ((e,) if isinstance(e, str) else (e or ()))}
    if size <= 1 or axis in used or not shape:
        return spec
    best = None
    for i, dim in enumerate(shape):
        if i in keep_whole:
            continue
        e = entries[i]
        current = tuple((e,) if isinstance(e, str) else (e or ()))
        shards = math.prod(mesh.shape[a] for a in current)
        if dim % (shards * size) == 0 and (best is None or dim > shape[best]):
            best = i
    if best is None:
        return spec
    e = entries[best]
    current = tuple((e,) if isinstance(e, str) else (e or ()))
    new = current + (axis,)
    entries[best] = new if len(new) > 1 else new[0]
    return P(*entries)


def tree_shardings(abstract_tree, axes_tree, mesh: Mesh, rules: dict[str, list[str]], *, fsdp_all: bool = True):
    """NamedShardings for a pytree of arrays given a matching pytree of logical axis tuples.

    With `fsdp_all` (parameters), a leaf the rules do not split along `fsdp` is split along its largest
    evenly dividing dimension (`fsdp_fallback`), so each fsdp device holds 1/fsdp of every parameter that can
    be divided at all.
    """

    def one(x, axes):
        spec = logical_to_spec(axes, rules, x.shape, mesh)
        if fsdp_all:
            spec = fsdp_fallback(spec, x.shape, mesh, keep_whole=[i for i, a in enumerate(axes) if a == STACK])
        return NamedSharding(mesh, spec)

    return jax.tree.map(
        one,
        abstract_tree,
        axes_tree,
        is_leaf=lambda a: isinstance(a, tuple) and all(isinstance(s, (str, type(None))) for s in a),
    )


def batch_sharding(mesh: Mesh, ndim: int = 2, leading: int = 0) -> NamedSharding:
    """Rows split over data x fsdp; `leading` unsplit axes come first (e.g. K steps of batches)."""
    return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch(global_batch: int, mesh: Mesh, grad_accum: int = 1) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = global_batch // grad_accum
    if micro % shards:
        raise UserError(
            f"train.batch_size {global_batch} (micro-batch {micro} with grad_accum {grad_accum}) is not divisible by "
            f"mesh data*fsdp = {shards}; expected a multiple of {shards * grad_accum}"
        )


@contextlib.contextmanager
def activation_rules(mesh: Mesh | None, rules: dict[str, list[str]]):
    """Makes `constrain` place activations on `mesh` while tracing the model (no-op outside)."""
    token = _ACTIVE.set((mesh, rules) if mesh is not None else None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x, axes: Sequence[str | None]):
    """with_sharding_constraint by logical axes, when a mesh is active."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    if mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, rules, x.shape, mesh)))


def describe(mesh: Mesh) -> str:
    return " x ".join(f"{k}={v}" for k, v in mesh.shape.items())


def put_global_batch(
    local: dict[str, np.ndarray], mesh: Mesh, global_batch: int, leading: int = 0
) -> dict[str, jax.Array]:
    """Builds global arrays from this process's rows (each host holds only its part); rows are axis
    `leading` (0 for one batch, 1 for a stack of K steps' batches)."""
    out = {}
    for k, v in local.items():
        sharding = batch_sharding(mesh, v.ndim - leading, leading)
        shape = v.shape[:leading] + (global_batch,) + v.shape[leading + 1:]
        out[k] = jax.make_array_from_process_local_data(sharding, v, shape)
    return out
