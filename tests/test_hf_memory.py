"""Host memory of an import (benchmarks/hf_import_memory.py on a small model): a random-init RoBERTa
(4 layers, d=256, 16k vocabulary, ~29 MB) imported onto 8 simulated devices split fsdp=8 grows the
process's anonymous memory by little more than the devices' own arrays (1.0 x the file). A full host
copy would add another 1.0 x; the bound here is looser than the base-size figure (1.3 x) because fixed
costs (allocator, tokenizer) weigh more on a small file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers", reason="the benchmark model is made with transformers ([torch] extra)")

from cli_helpers import REPO, cli_env  # noqa: E402


def test_import_peak_anonymous_memory_is_about_the_file(tmp_path, tmp_path_factory):
    out = tmp_path / "mem.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "hf_import_memory.py"), "--layers", "4", "--hidden", "256",
           "--heads", "4", "--vocab", "16000", "--json", str(out)]
    p = subprocess.run(cmd, env=cli_env(tmp_path_factory), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert 0.99 < r["device_bytes_over_file"] < 1.01  # every parameter split 8 ways (a few vectors aside)
    assert r["peak_growth_over_file"] < 1.75, r
