"""Host memory of importing a Hugging Face checkpoint onto simulated devices (docs/benchmarks.md).

A random-init RobertaForMaskedLM (default: base size, 12 layers, d=768, 50,265-token vocabulary, ~0.5 GB
of float32 safetensors) is saved with `save_pretrained` to a temporary folder; a fresh subprocess with
8 simulated CPU devices then imports it with `xlplastic.hf.load_hf` onto an fsdp=8 mesh while a thread
samples the process's anonymous resident memory (`RssAnon` in /proc/self/status) every 2 ms.

On CPU the devices' arrays live in host memory too, so the imported parameters alone are 1.0 x the file
(each parameter split 8 ways, a few small vectors replicated): that is the floor. The pages of the
memory-mapped file are file-backed (`RssFile`), not anonymous, and do not count. What the figure shows is
the overhead on top: a full host copy would add another 1.0 x, random init plus a load 1.0 x more.

    python benchmarks/hf_import_memory.py                 # base size; prints the figures
    python benchmarks/hf_import_memory.py --layers 4 --hidden 256 --heads 4 --vocab 16000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, sys, threading, time
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_num_cpu_devices", int(sys.argv[2]))
from xlplastic.config import MeshConfig
from xlplastic.hf import load_hf

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0

jax.devices()
mesh = MeshConfig(data=1, fsdp=int(sys.argv[3]), tensor=int(sys.argv[4]))
peak = [0]
stop = threading.Event()

def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.002)

base = anon()
t = threading.Thread(target=sample, daemon=True)
t.start()
t0 = time.perf_counter()
m = load_hf(sys.argv[1], mesh, log=lambda s: None)
jax.block_until_ready(m.params)
wall = time.perf_counter() - t0
stop.set(); t.join()
after = anon()
peak[0] = max(peak[0], after)
held = sum(s.data.nbytes for x in jax.tree.leaves(m.params) for s in x.addressable_shards)
print(json.dumps({"baseline_anon": base, "peak_anon": peak[0], "final_anon": after, "device_bytes": held,
                  "load_s": wall}))
"""


def save_model(d: Path, layers: int, hidden: int, heads: int, ffn: int, vocab: int, positions: int) -> int:
    """A random-init RobertaForMaskedLM and a word-level tokenizer of `vocab` tokens in `d`; returns the
    size of model.safetensors."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    cfg = transformers.RobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=ffn,
                                     max_position_embeddings=positions, type_vocab_size=1, pad_token_id=1)
    torch.manual_seed(0)
    model = transformers.RobertaForMaskedLM(cfg)
    model.save_pretrained(str(d))
    del model
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    v = {t: i for i, t in enumerate(specials)} | {f"w{i}": i for i in range(len(specials), vocab)}
    tok = Tokenizer(models.WordLevel(v, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    tok.save(str(d / "tokenizer.json"))
    return (d / "model.safetensors").stat().st_size


def measure(d: Path, devices: int = 8, fsdp: int = 8, tensor: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env["JAX_PLATFORMS"] = "cpu"
    p = subprocess.run([sys.executable, "-c", CHILD, str(d), str(devices), str(fsdp), str(tensor)], env=env,
                       capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"import subprocess failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ffn", type=int, default=None, help="default 4 x hidden")
    ap.add_argument("--vocab", type=int, default=50265)
    ap.add_argument("--positions", type=int, default=514)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--fsdp", type=int, default=8)
    ap.add_argument("--tensor", type=int, default=1)
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hf-import-mem-") as tmp:
        t0 = time.perf_counter()
        size = save_model(Path(tmp), a.layers, a.hidden, a.heads, a.ffn or 4 * a.hidden, a.vocab, a.positions)
        t_save = time.perf_counter() - t0
        r = measure(Path(tmp), a.devices, a.fsdp, a.tensor)
    growth = r["peak_anon"] - r["baseline_anon"]
    out = {"model": {"layers": a.layers, "hidden": a.hidden, "heads": a.heads, "ffn": a.ffn or 4 * a.hidden,
                     "vocab": a.vocab, "positions": a.positions},
           "mesh": {"devices": a.devices, "fsdp": a.fsdp, "tensor": a.tensor},
           "file_bytes": size, **r, "peak_growth_bytes": growth, "peak_growth_over_file": growth / size,
           "final_growth_over_file": (r["final_anon"] - r["baseline_anon"]) / size,
           "device_bytes_over_file": r["device_bytes"] / size, "save_s": t_save}
    mb = 1 / 2**20
    print(f"file {size * mb:.1f} MiB; RssAnon baseline {r['baseline_anon'] * mb:.1f} MiB, peak {r['peak_anon'] * mb:.1f} "
          f"MiB, after {r['final_anon'] * mb:.1f} MiB; device arrays {r['device_bytes'] * mb:.1f} MiB "
          f"({out['device_bytes_over_file']:.3f} x file)")
    print(f"peak anonymous growth {growth * mb:.1f} MiB = {out['peak_growth_over_file']:.3f} x the file "
          f"(after: {out['final_growth_over_file']:.3f} x); import {r['load_s']:.1f} s on {a.devices} devices "
          f"(fsdp={a.fsdp}, tensor={a.tensor})")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
