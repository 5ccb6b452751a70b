"""Process-level CPU tuning, applied by the CLI before JAX starts (set XLPLASTIC_CPU_TUNING=0 to skip).

Measured on a 2-core x86-64 CPU (docs/benchmarks.md): XLA's CPU backend with oneDNN and XNNPACK kernels
(PyTorch's CPU matmuls are oneDNN too) and a malloc that reuses freed memory instead of returning it to
the kernel raise training throughput by ~15-20%. Without the malloc settings XLA maps its multi-hundred-MB
scratch buffer afresh on every step and spends ~20% of the step in page faults. Neither changes results
beyond float rounding; accelerator runs are unaffected (these are host-side settings).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

XLA_CPU_FLAGS = ("--xla_cpu_use_onednn=true", "--xla_cpu_use_xnnpack=true")

# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def tune_cpu_runtime() -> list[str]:
    """Returns what was applied (for logs and benchmark records)."""
    if os.environ.get("XLPLASTIC_CPU_TUNING", "1") == "0":
        return []
    applied = []
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in XLA_CPU_FLAGS:
        if flag.split("=")[0] not in flags:  # a user's own setting wins
            flags = f"{flags} {flag}".strip()
            applied.append(flag)
    os.environ["XLA_FLAGS"] = flags
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name) if libc_name else None
        if libc is not None and hasattr(libc, "mallopt"):
            ok = libc.mallopt(_M_ARENA_MAX, 1) and libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 40)
            if ok:
                applied.append("mallopt(arena_max=1, mmap_max=0, trim_threshold=1TiB)")
    except OSError:  # not glibc (e.g. musl, macOS): nothing to tune
        pass
    return applied
