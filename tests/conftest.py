"""Test set-up: 8 simulated CPU devices in this process (sharding tests build meshes over subsets)."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Persistent compilation cache: the suite compiles the same tiny programs many times (also in the
# subprocesses it starts, which inherit these variables); cache hits turn ~10 s compiles into ~1 s.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".pytest_cache" / "jax-compile"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)



@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = Path(os.environ.get("XLPLASTIC_DATA_DIR", SHARED_DATA))
    if not data.is_dir():
        pytest.skip(f"shared data folder absent ({data}); set XLPLASTIC_DATA_DIR to run tests on real data")
    return data
