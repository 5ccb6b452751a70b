"""Sharding: the same run on 1 device and on a data=2 x fsdp=2 x tensor=2 mesh computes the same thing."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from xlplastic.config import MeshConfig, load_config
from xlplastic.errors import UserError
from xlplastic.run import run
from xlplastic.sharding import check_batch, logical_to_spec, make_mesh, mesh_shape


def _losses(run_dir):
    return [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def test_one_vs_eight_devices_same_losses(root, tmp_path):
    assert jax.device_count() == 8
    over = ["model.dropout=0.1", "checkpoint.every=0", "train.progress=false"]
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    one = load_config(root / "configs/tiny.yaml", over + [cache, "mesh.data=1"])
    eight = load_config(root / "configs/tiny.yaml", over + [cache, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    r1 = run(one, tmp_path / "one", devices=jax.devices()[:1])
    r8 = run(eight, tmp_path / "eight")
    l1, l8 = _losses(r1.run_dir), _losses(r8.run_dir)
    assert len(l1) == len(l8) == 30
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    assert l1[-1] < l1[0] - 0.3  # it trained
    # the eight-device run really was sharded three ways
    assert r8.results["final"]["devices"] == 8


def test_golden_parameter_specs():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    rules = MeshConfig().rules
    spec = lambda axes, shape: logical_to_spec(axes, rules, shape, mesh)  # noqa: E731
    assert spec(("vocab", "embed"), (400, 64)) == P("tensor", "fsdp")
    assert spec(("qkv", "embed", "heads", "kv"), (3, 64, 2, 32)) == P(None, "fsdp", "tensor", None)
    assert spec(("heads", "kv", "embed"), (2, 32, 64)) == P("tensor", None, "fsdp")
    assert spec(("embed", "mlp"), (64, 128)) == P("fsdp", "tensor")
    # a mesh axis is used once per array, and non-dividing dimensions stay replicated
    assert spec(("embed", "embed"), (64, 64)) == P("fsdp", None)
    assert spec(("vocab", "embed"), (401, 64)) == P(None, "fsdp")


def test_activation_batch_spec_uses_data_and_fsdp():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    s = logical_to_spec(("batch", "length", "embed"), MeshConfig().rules, (8, 32, 64), mesh)
    assert s[0] == ("data", "fsdp")


def test_mesh_shapes_and_errors():
    assert mesh_shape(MeshConfig(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
    assert mesh_shape(MeshConfig(data=1, fsdp=-1, tensor=1), 8) == (1, 8, 1)
    with pytest.raises(UserError, match="-1"):
        mesh_shape(MeshConfig(data=-1, fsdp=-1), 8)
    with pytest.raises(UserError, match="devices"):
        mesh_shape(MeshConfig(data=3, fsdp=1, tensor=1), 8)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    check_batch(8, mesh)
    with pytest.raises(UserError, match="not divisible by mesh data\\*fsdp = 4"):
        check_batch(6, mesh)
    with pytest.raises(UserError, match="grad_accum 2"):
        check_batch(12, mesh, grad_accum=2)
