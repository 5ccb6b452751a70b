"""Golden sharding files (MaxText's practice): every parameter's PartitionSpec and the per-device state bytes
of configs/roberta_base.yaml and configs/xlmr_base.yaml on a v5p-128-shaped mesh (64 devices), checked into
tests/golden/. A change of sharding rules, logical axes or parameter layout shows up here as a diff in review.

Computed from abstract shapes on a `jax.sharding.AbstractMesh` (no devices, no libtpu): runs on any CPU in
about a second. After an intended change, regenerate and commit the files:

    XLPLASTIC_REGENERATE_GOLDEN=1 python -m pytest tests/test_golden_sharding.py -q
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from xlplastic.config import load_config
from xlplastic.plan import parse_topology, sharding_record

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
TOPOLOGY = "v5p-128"
CONFIGS = ["roberta_base", "xlmr_base"]
REGENERATE = os.environ.get("XLPLASTIC_REGENERATE_GOLDEN") == "1"


def golden_path(name: str) -> Path:
    return GOLDEN / f"sharding_{name}_{TOPOLOGY}.json"


def dumps(record: dict) -> str:
    """JSON with one parameter per line, so that a review diff names the parameter that changed."""
    head = {k: v for k, v in record.items() if k != "parameters"}
    lines = json.dumps(head, indent=2)[:-2] + ',\n  "parameters": [\n'
    lines += ",\n".join("    " + json.dumps(p) for p in record["parameters"])
    return lines + "\n  ]\n}\n"


def record_for(name: str) -> dict:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    return sharding_record(cfg, parse_topology(TOPOLOGY))


@pytest.mark.parametrize("name", CONFIGS)
def test_sharding_matches_golden(name):
    got = record_for(name)
    path = golden_path(name)
    if REGENERATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(got))
    assert path.is_file(), f"{path} missing; regenerate: XLPLASTIC_REGENERATE_GOLDEN=1 python -m pytest {__file__}"
    want = json.loads(path.read_text())
    assert json.loads(dumps(got)) == json.loads(dumps(want))  # the writer's own format round-trips
    hint = ("sharding changed; if intended, regenerate with XLPLASTIC_REGENERATE_GOLDEN=1 python -m pytest "
            "tests/test_golden_sharding.py and commit tests/golden/")
    head_got = {k: v for k, v in got.items() if k != "parameters"}
    head_want = {k: v for k, v in want.items() if k != "parameters"}
    assert head_got == head_want, hint
    by_path = {p["path"]: p for p in want["parameters"]}
    diffs = [f"{p['path']}: {by_path.get(p['path'])} -> {p}" for p in got["parameters"] if by_path.get(p["path"]) != p]
    gone = sorted(set(by_path) - {p["path"] for p in got["parameters"]})
    assert not diffs and not gone, hint + "\n" + "\n".join(diffs[:10] + [f"removed: {g}" for g in gone[:10]])


def test_golden_files_say_what_they_check():
    """The files are what the docs describe: 64 devices, the configs' meshes, state bytes that add up."""
    rb = json.loads(golden_path("roberta_base").read_text())
    xl = json.loads(golden_path("xlmr_base").read_text())
    assert rb["devices"] == xl["devices"] == 64
    assert rb["mesh"] == {"data": 64, "fsdp": 1, "tensor": 1}  # roberta_base: pure data parallelism
    assert xl["mesh"] == {"data": 8, "fsdp": 8, "tensor": 1}  # xlmr_base: fsdp 8
    for rec in (rb, xl):
        params = sum(p["bytes_per_device"] for p in rec["parameters"])
        assert params == rec["bytes_per_device"]["params"]
        # AdamW: two float32 moments per parameter (+ a few counters)
        assert 2 * params <= rec["bytes_per_device"]["opt_state"] <= 2 * params + 4096
    # fsdp 8 divides every parameter of XLM-R base that can be divided: ~1/8 of the whole per device
    whole = sum(4 * math.prod(p["shape"]) for p in xl["parameters"])
    assert xl["bytes_per_device"]["params"] <= whole / 8 * 1.01
    emb = next(p for p in xl["parameters"] if p["path"] == "token_embed")
    assert emb["shape"] == [250000, 768] and emb["spec"] == "P('tensor', 'fsdp')"
