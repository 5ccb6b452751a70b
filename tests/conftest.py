"""Test set-up: 8 simulated CPU devices in this process (sharding tests build meshes over subsets)."""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = Path(os.environ.get("XLPLASTIC_DATA_DIR", SHARED_DATA))
    if not data.is_dir():
        pytest.skip(f"shared data folder absent ({data}); set XLPLASTIC_DATA_DIR to run tests on real data")
    return data
