"""Training throughput: xlplastic's jitted step vs HF transformers' `RobertaForMaskedLM` (PyTorch, eager).

Both sides train the same encoder (layers, width, heads, FFN, vocabulary, max positions, dropout 0.1 on
hidden states and attention probabilities, exact-erf GELU, tied output embedding, post-LN) with AdamW of
the same hyper-parameters (decay on matrices only, constant learning rate) on the same random token
batches with 15% of tokens predicted (80% <mask> / 10% random / 10% kept). xlplastic runs as its loop
does with `train.steps_per_call = --steps-per-call` (K steps scanned in one jitted call, bit-identical
to K calls); with K > 1 the one-step-per-call configuration is timed as well. Each side is warmed up first
(compilation excluded), then timed in `--rounds` interleaved windows of `--steps` steps each (JAX:
`block_until_ready` only at the end of each window); the reported step time is the median window's,
and the best window is reported too (on a shared machine, contention from other processes inflates the
slower windows; "cores busy" = process CPU seconds / wall seconds per window shows it).

Model FLOPs per token (training = forward + backward = 3 x forward, multiply-add = 2 FLOPs), counted the
same way for both sides so that MFU is comparable:

    body      6 * L * (4 D^2 + 2 D F)          QKV, attention output and the two FFN matrices
    attention 12 * L * T * D                   QK^T and PV: 2 * 2 * T * D per token per layer, x3, no causal halving
    head      6 * (D^2 + D V) * m              MLM dense + tied vocabulary projection at the predicted
                                               fraction m = mask_prob (0.15) of positions: the useful work

Biases, layer norms, GELU, softmax, the embedding gather and the optimizer update are not counted. The
work actually executed differs in the head: xlplastic projects the ceil(0.15 T) padded predicted
positions of each sequence (m_exec = ceil(0.15 T) / T), while HF's standard model projects every position
(m_exec = 1); both are reported as "executed FLOPs per token", but MFU uses the model FLOPs above.

Peak: `--peak-tflops` when given; else `--peak measured` (default): the best of 10 timed
2048x2048x2048 float32 matmuls in JAX and in PyTorch (with the same threads) on this machine, measured at
start-up, an achievable dense-GEMM peak; or `--peak datasheet`: the vendor's dense bf16 figure for the
device kind (`DATASHEET_BF16_FLOPS`, GPUs), and no MFU (null, with the reason) where none is known.

Device: PyTorch runs on the platform JAX runs on (CUDA when JAX's backend is a GPU, else the CPU), with
`attn_implementation="sdpa"`, bf16 autocast when `--dtype bfloat16` (parameters and AdamW state float32, as
xlplastic's), AdamW fused on CUDA. `--attention-dropout 0` lets both sides use fused attention kernels
(xlplastic's `jax.nn.dot_product_attention`, e.g. `--attention-impl cudnn`; SDPA's flash kernel).

Memory: xlplastic = the device allocator's peak (`device.memory_stats()["peak_bytes_in_use"]`, after the
warm-up of the first xlplastic side, built before any other) where the backend reports it (GPU, TPU), else
the compiled step's `memory_analysis()` (arguments + outputs - donated aliases + temporaries, i.e. state +
batch + metrics + activations/gradients, per device; always recorded); PyTorch on CUDA =
`torch.cuda.max_memory_allocated()`, on the CPU = growth of the process RSS over its value just before the
model is built, sampled every 2 ms during the warm-up steps (parameters, gradients, AdamW moments,
activations and whatever the allocator keeps).

Configurations: `--config CONFIG` takes the model shape, sequence length, compute dtype and dropout from a
config file (the options above override it); `--set KEY=VALUE` changes xlplastic's bench config (e.g.
`model.scan_layers=true`); `--variant NAME KEY=VALUE...` times one more xlplastic row `xlplastic-NAME` with
those changes on top, with its own compile time (e.g. the unrolled layout beside the scanned one).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from xlplastic.bench.common import add_model_args, check_json_path, model_config, shape_record, write_json
from xlplastic.errors import UserError

SPECIAL_IDS = (0, 1, 2, 3, 4)  # RoBERTa convention: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4
BOS, PAD, EOS, MASK = 0, 1, 2, 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlplastic bench train", description=__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed windows per side (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="xlplastic compute dtype")
    p.add_argument("--config", help="take the model shape, seq, dtype and dropout from this config file")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--attention-dropout", type=float, default=None, help="attention-probability dropout "
                   "(default: --dropout); 0 lets both sides use fused attention kernels")
    p.add_argument("--attention-impl", choices=["xla", "cudnn"], default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="a change to xlplastic's bench config, repeatable (e.g. model.scan_layers=true)")
    p.add_argument("--variant", action="append", nargs="+", default=[], metavar=("NAME", "KEY=VALUE"),
                   help="one more timed xlplastic row `xlplastic-NAME` with these --set changes on top, repeatable")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores JAX uses)")
    p.add_argument("--peak", choices=["measured", "datasheet"], default="measured",
                   help="peak for MFU: a measured float32 matmul (default) or the device's data-sheet bf16 figure")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU in TFLOP/s (overrides --peak)")
    p.add_argument("--peak-size", type=int, default=2048, help="matmul size for the measured peak")
    p.add_argument("--skip-torch", action="store_true", help="xlplastic only")
    p.add_argument("--extra-bf16", action="store_true", help="also time xlplastic with bfloat16 compute (extra row)")
    p.add_argument("--xla-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an XLA option for xlplastic's steps (train.compiler_options), repeatable; "
                   "`--xla-option onednn` = train.CPU_ONEDNN_OPTIONS")
    p.add_argument("--steps-per-call", type=int, default=8,
                   help="xlplastic's train.steps_per_call (K steps scanned in one jitted call); with K > 1 the "
                   "1-step-per-call configuration is timed too (extra row)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


# ----------------------------------------------------------------------------------------------
# FLOPs and peak


def flops_per_token(layers: int, d: int, ffn: int, vocab: int, seq: int, head_fraction: float) -> dict[str, float]:
    body = 6.0 * layers * (4 * d * d + 2 * d * ffn)
    attention = 12.0 * layers * seq * d
    head = 6.0 * (d * d + d * vocab) * head_fraction
    return {"body": body, "attention": attention, "head": head, "total": body + attention + head}


FLOPS_FORMULA = (
    "6*L*(4*D^2 + 2*D*F) + 12*L*T*D + 6*(D^2 + D*V)*m  "
    "(fwd+bwd = 3x fwd; matmuls only; m = mask_prob = 0.15 for model FLOPs; executed: "
    "m = ceil(0.15*T)/T for xlplastic, m = 1 for HF RobertaForMaskedLM)"
)


# Dense (no sparsity) bf16 tensor-core FLOP/s from NVIDIA's data sheets, matched as substrings of JAX's
# `device_kind` in this order (more specific names first):
# A100 https://www.nvidia.com/en-us/data-center/a100/ , H100 https://www.nvidia.com/en-us/data-center/h100/ ,
# H200 https://www.nvidia.com/en-us/data-center/h200/ (the sheets print twice these, "with sparsity").
DATASHEET_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200 NVL", 835e12),
    ("H100", 989e12),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", 989e12),  # SXM ("NVIDIA H200"; GH200 too)
    ("A100", 312e12),
)


def datasheet_peak(device_kind: str) -> dict[str, Any]:
    """The data-sheet bf16 peak of a device kind, or `peak_flops: None` and the reason MFU is then null."""
    for name, flops in DATASHEET_BF16_FLOPS:
        if name.lower() in device_kind.lower():
            return {"peak_flops": flops, "source": f"data sheet: {name} dense bf16 {flops / 1e12:g} TFLOP/s"}
    known = ", ".join(n for n, _ in DATASHEET_BF16_FLOPS)
    return {"peak_flops": None, "source": f"no data-sheet bf16 peak for device kind {device_kind!r} (known: {known}); "
            "MFU is null: pass --peak-tflops or --peak measured"}


def measure_peak_flops(threads: int, with_torch: bool, n: int = 2048, reps: int = 10) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n), dtype=np.float32))
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, b).block_until_ready()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    out = {"jax_matmul_flops": 2.0 * n**3 / best}
    if with_torch:
        import torch

        ta, tb = torch.from_numpy(np.array(a)), torch.from_numpy(np.array(b))
        torch.mm(ta, tb)
        best = math.inf
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(ta, tb)
            best = min(best, time.perf_counter() - t)
        out["torch_matmul_flops"] = 2.0 * n**3 / best
    out["peak_flops"] = max(out.values())
    out["source"] = f"measured: best of {reps} {n}x{n}x{n} float32 matmuls (JAX{' and PyTorch' if with_torch else ''}), {threads} threads"
    return out


# ----------------------------------------------------------------------------------------------
# Data


def random_batches(n: int, batch: int, seq: int, vocab: int, seed: int) -> list[np.ndarray]:
    """Full-length sequences `<s> w ... w </s>` with w uniform over the non-special ids."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = rng.integers(len(SPECIAL_IDS), vocab, size=(batch, seq), dtype=np.int64).astype(np.int32)
        t[:, 0], t[:, -1] = BOS, EOS
        out.append(t)
    return out


class RssSampler:
    """Peak resident set size (bytes) of this process, sampled from /proc/self/statm in a thread."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.page
        except OSError:  # not Linux
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.rss())


# ----------------------------------------------------------------------------------------------
# xlplastic side


def xla_options(items: list[str]) -> dict[str, Any]:
    """`--xla-option` values as `train.compiler_options` (values parse as `--set` values do)."""
    from xlplastic.config import apply_overrides
    from xlplastic.train import CPU_ONEDNN_OPTIONS

    return {**(CPU_ONEDNN_OPTIONS if "onednn" in items else {}),
            **apply_overrides({}, [i for i in items if i != "onednn"])}


def bench_config(args, dtype: str, steps_per_call: int, overrides: list[str]):
    """xlplastic's `Config` for one row: the shape options, one device, AdamW at a constant rate, then the
    `--set`/`--variant` changes (checked as a config file's would be)."""
    from pydantic import ValidationError

    from xlplastic.config import (Config, DataConfig, MeshConfig, OptimizerConfig, ScheduleConfig, TrainConfig,
                                  apply_overrides)

    cfg = Config(
        name="bench",
        model=model_config(
            args,
            dropout=args.dropout,
            attention_dropout=args.dropout if args.attention_dropout is None else args.attention_dropout,
            dtype=dtype,
            attention_impl=args.attention_impl,
        ),
        mesh=MeshConfig(data=1),  # one device: on CPU it is all the cores (XLA's thread pool)
        data=DataConfig(seq_len=args.seq),
        train=TrainConfig(
            steps=args.warmup + args.rounds * args.steps,
            batch_size=args.batch,
            seed=args.seed,
            optimizer=OptimizerConfig(),
            schedule=ScheduleConfig(kind="constant"),
            steps_per_call=steps_per_call,
            compiler_options=xla_options(args.xla_option) or None,
        ),
    )
    if not overrides:
        return cfg
    try:
        return Config.model_validate(apply_overrides(cfg.model_dump(), overrides))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise UserError(f"--set {' '.join(overrides)}: {where}: {err['msg']}; expected keys and values "
                        "that `xlplastic run` accepts") from None


def device_peak_bytes(device) -> int | None:
    """The device allocator's peak bytes in use so far, where the backend reports it (GPU, TPU; not CPU)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    peak = (stats or {}).get("peak_bytes_in_use")
    return int(peak) if peak else None


class XlplasticSide:
    def __init__(self, cfg, vocab: int, batches: list[np.ndarray]):
        import jax

        from xlplastic.sharding import make_mesh
        from xlplastic.train import Specials, build_trainer

        self.jax = jax
        self.cfg = cfg
        self.mesh = make_mesh(cfg.mesh, jax.devices()[:1])
        self.trainer = build_trainer(cfg, self.mesh, vocab, Specials(pad=PAD, mask=MASK, all_ids=SPECIAL_IDS))
        self.k = cfg.train.steps_per_call
        self.batches = batches
        self.state = self.trainer.init()
        t = time.perf_counter()
        fn = self.trainer.step if self.k == 1 else self.trainer.steps
        compiled = fn.lower(self.state, self._put(0)).compile()
        self.step_fn = compiled  # the jitted step's (or K steps') executable, compiled once
        self.compile_s = time.perf_counter() - t
        m = compiled.memory_analysis()
        self.memory = None
        if m is not None:
            arg, out, alias, temp = (
                int(m.argument_size_in_bytes),
                int(m.output_size_in_bytes),
                int(m.alias_size_in_bytes),
                int(m.temp_size_in_bytes),
            )
            self.memory = {
                "argument_bytes": arg,
                "output_bytes": out,
                "alias_bytes": alias,
                "temp_bytes": temp,
                "compiled_peak_bytes": arg + out - alias + temp,
                "peak_bytes": arg + out - alias + temp,
                "measured": "compiled step memory_analysis(): argument + output - alias (donated) + temp, per device",
            }
        self.i = 0

    def warmup(self, n: int, measure_device_peak: bool) -> None:
        """Untimed steps; with `measure_device_peak` (the first xlplastic side, so the allocator's peak is
        its own) the device's measured peak replaces the compiled estimate where the backend reports it."""
        self.run(n)
        peak = device_peak_bytes(self.mesh.devices.flat[0]) if measure_device_peak else None
        if peak is not None:
            self.memory = {**(self.memory or {}), "peak_bytes": peak,
                           "measured": "device.memory_stats()['peak_bytes_in_use'] after the warm-up steps"}

    def _put(self, i: int):
        """The batches of steps i..i+K-1 on device (as the run loop puts them: one call's worth)."""
        from xlplastic.loop import put_batches

        local = [{"tokens": self.batches[(i + j) % len(self.batches)]} for j in range(self.k)]
        return put_batches(local, self.mesh, local[0]["tokens"].shape[0])

    def calls(self, n: int) -> int:
        return max(1, math.ceil(n / self.k))

    def run(self, n: int) -> float:
        """Runs n steps rounded up to whole calls (`steps_run`); seconds from the first dispatch to the
        last step's results being ready."""
        t = time.perf_counter()
        metrics = None
        for _ in range(self.calls(n)):
            self.state, metrics = self.step_fn(self.state, self._put(self.i))
            self.i += self.k
        self.jax.block_until_ready((self.state, metrics))
        dt = time.perf_counter() - t
        self.last_loss = float(np.ravel(metrics["loss"])[-1])
        return dt

    def steps_run(self, n: int) -> int:
        return self.calls(n) * self.k


# ----------------------------------------------------------------------------------------------
# PyTorch side (HF transformers RobertaForMaskedLM, eager, SDPA attention)


class TorchSide:
    """The same model and training step in PyTorch, on `device` ("cuda" or "cpu"), built from xlplastic's
    `ModelConfig` so that both sides cannot drift apart."""

    def __init__(self, model_cfg, batches: list[np.ndarray], threads: int, seed: int, device: str):
        import torch
        from transformers import RobertaConfig, RobertaForMaskedLM

        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.sampler = RssSampler()
        self.rss_before = self.sampler.rss()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        m = model_cfg
        if m.norm != "post":
            raise UserError(f"model.norm {m.norm!r}: HF RobertaForMaskedLM is post-LN only; expected norm post "
                            "(or --skip-torch)")
        seq = batches[0].shape[1]
        config = RobertaConfig(
            vocab_size=m.vocab_size,
            hidden_size=m.hidden_size,
            num_hidden_layers=m.num_layers,
            num_attention_heads=m.num_heads,
            intermediate_size=m.mlp_dim,
            hidden_act="gelu",  # exact erf GELU, as xlplastic's approximate=False
            hidden_dropout_prob=m.dropout,
            attention_probs_dropout_prob=m.attention_dropout,
            # RoBERTa's position ids start after padding_idx (PAD + 1), so T tokens need T + PAD + 1 rows
            max_position_embeddings=max(m.max_positions, seq + PAD + 1),
            type_vocab_size=1,  # RoBERTa: one (constant) token type; xlplastic has none
            initializer_range=m.init_std,
            layer_norm_eps=m.layer_norm_eps,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
            tie_word_embeddings=True,
            attn_implementation="sdpa",
        )
        self.model = RobertaForMaskedLM(config).to(self.device)
        self.model.train()
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None)
        self.autocast_dtype = torch.bfloat16 if m.dtype == "bfloat16" else None
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        from xlplastic.config import OptimizerConfig

        o = OptimizerConfig()
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr,
            betas=(o.b1, o.b2),
            eps=o.eps,
            **({"fused": True} if self.cuda else {}),
        )
        self.description = (
            f"HF RobertaForMaskedLM on {self.device.type}, attention {self.attn_implementation}, "
            f"{'bf16 autocast' if self.autocast_dtype is not None else 'float32'} compute, float32 parameters, "
            f"AdamW{' fused' if self.cuda else ''}, eager"
        )
        self.batches = [torch.from_numpy(b).long().to(self.device) for b in batches]
        self.vocab = m.vocab_size
        self.specials = torch.tensor(SPECIAL_IDS, device=self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.i = 0

    def _mask(self, tokens):
        """DataCollatorForLanguageModeling's recipe: 15% of non-special tokens predicted, 80/10/10 (on the
        side's device)."""
        torch, g, dev = self.torch, self.gen, self.device
        labels = tokens.clone()
        special = torch.isin(tokens, self.specials)
        prob = torch.full(tokens.shape, 0.15, device=dev).masked_fill_(special, 0.0)
        picked = torch.bernoulli(prob, generator=g).bool()
        labels[~picked] = -100
        inputs = tokens.clone()
        to_mask = torch.bernoulli(torch.full(tokens.shape, 0.8, device=dev), generator=g).bool() & picked
        inputs[to_mask] = MASK
        to_rand = torch.bernoulli(torch.full(tokens.shape, 0.5, device=dev), generator=g).bool() & picked & ~to_mask
        rand = torch.randint(len(SPECIAL_IDS), self.vocab, tokens.shape, generator=g, device=dev)
        inputs[to_rand] = rand[to_rand]
        return inputs, labels

    def _step(self, tokens):
        inputs, labels = self._mask(tokens)
        with self.torch.autocast(self.device.type, dtype=self.autocast_dtype or self.torch.bfloat16,
                                 enabled=self.autocast_dtype is not None):
            out = self.model(input_ids=inputs, attention_mask=tokens != PAD, labels=labels)
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    def steps_run(self, n: int) -> int:
        return n

    def run(self, n: int) -> float:
        """Seconds for n steps, up to the last step's work being done (CUDA: synchronised)."""
        t = time.perf_counter()
        loss = None
        for _ in range(n):
            loss = self._step(self.batches[self.i % len(self.batches)])
            self.i += 1
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t
        self.last_loss = float(loss)
        return dt

    def warmup(self, n: int) -> None:
        with self.sampler:
            self.run(n)
        if self.cuda:
            self.memory = {
                "peak_bytes": int(self.torch.cuda.max_memory_allocated(self.device)),
                "measured": "torch.cuda.max_memory_allocated() over model build and warm-up (allocated, not reserved)",
            }
        else:
            self.memory = {
                "peak_bytes": self.sampler.peak - self.rss_before,
                "measured": "peak process RSS growth over the RSS before the model was built, sampled every 2 ms "
                "during warm-up",
            }


# ----------------------------------------------------------------------------------------------


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}{unit}"
    return f"{x:.3g}{unit}"


def _table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    cells = [[h for _, h in cols]] + [[r.get(k, "-") for k, _ in cols] for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(cols))]
    lines = []
    for j, c in enumerate(cells):
        lines.append("  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(c, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_threads(requested: int | None) -> int:
    """--threads when given, else the cores this process may run on (what JAX uses): its affinity
    mask where the platform has one, else the CPU count. (This was one expression, `a or b if c else
    d`, which parses as `(a or b) if c else d` and so dropped --threads where there is no
    sched_getaffinity, e.g. macOS.)"""
    if requested is not None:
        if requested < 1:
            raise UserError(f"--threads {requested}; expected a positive number of threads")
        return requested
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def config_defaults(path: str) -> dict[str, Any]:
    """The bench options a config file fixes: shape, sequence length, compute dtype, dropout."""
    from xlplastic.config import load_config

    cfg = load_config(path, run=False)
    m = cfg.model
    vocab = m.vocab_size or cfg.data.tokenizer.vocab_size
    return dict(layers=m.num_layers, hidden=m.hidden_size, heads=m.num_heads, ffn=m.mlp_dim, vocab=vocab,
                seq=cfg.data.seq_len, max_positions=m.max_positions, dtype=m.dtype, dropout=m.dropout,
                attention_dropout=m.attention_dropout, attention_impl=m.attention_impl)


def parse_args(argv: list[str] | None):
    """Options, with `--config`'s values as the defaults that explicit options override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**config_defaults(args.config))
        args = parser.parse_args(argv)
    for v in args.variant:
        if len(v) < 2 or not all("=" in kv for kv in v[1:]):
            raise UserError(f"--variant {' '.join(v)}: expected NAME KEY=VALUE [KEY=VALUE ...]")
    return args


def model_flops(cfg, head_fraction: float) -> dict[str, float]:
    m = cfg.model
    return flops_per_token(m.num_layers, m.hidden_size, m.mlp_dim, m.vocab_size, cfg.data.seq_len, head_fraction)


def device_record(jax) -> dict[str, Any]:
    d = jax.devices()[0]
    return {"platform": d.platform, "device_kind": d.device_kind, "count": jax.device_count(),
            "jax_backend": jax.default_backend()}


def _distribution_versions(prefixes: tuple[str, ...]) -> dict[str, str]:
    """Installed distributions whose names start with a prefix (JAX's CUDA plugins, NVIDIA libraries)."""
    from importlib import metadata

    out = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(prefixes):
            out[name] = dist.version
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_json_path(args.json)
    if args.ffn is None:
        args.ffn = 4 * args.hidden
    import jax

    threads = resolve_threads(args.threads)
    with_torch = not args.skip_torch
    tokens_per_step = args.batch * args.seq
    device = device_record(jax)

    if args.peak_tflops:
        peak = {"peak_flops": args.peak_tflops * 1e12, "source": "given with --peak-tflops"}
    elif args.peak == "datasheet":
        peak = datasheet_peak(device["device_kind"])
    else:
        peak = measure_peak_flops(threads, with_torch, n=args.peak_size)
    peak_flops = peak["peak_flops"]

    n_batches = 8
    batches = random_batches(n_batches, args.batch, args.seq, args.vocab, args.seed)
    k = args.steps_per_call
    rows_cfg: list[tuple[str, Any]] = [("xlplastic", bench_config(args, args.dtype, k, args.overrides))]
    if k > 1:
        rows_cfg.append(("xlplastic-single", bench_config(args, args.dtype, 1, args.overrides)))
    if args.extra_bf16 and args.dtype != "bfloat16":
        rows_cfg.append(("xlplastic-bf16", bench_config(args, "bfloat16", k, args.overrides)))
    for name, *changes in args.variant:
        rows_cfg.append((f"xlplastic-{name}", bench_config(args, args.dtype, k, args.overrides + changes)))
    main_cfg = rows_cfg[0][1]

    torch_side = None
    if with_torch:  # first, so that its RSS growth is not hidden by memory JAX already holds
        torch_side = TorchSide(main_cfg.model, batches, threads, args.seed,
                               "cuda" if device["platform"] == "gpu" else "cpu")
        torch_side.warmup(args.warmup)
    sides: list[tuple[str, Any]] = []
    for i, (name, cfg) in enumerate(rows_cfg):
        side = XlplasticSide(cfg, args.vocab, batches)
        side.warmup(args.warmup, measure_device_peak=i == 0)
        sides.append((name, side))
    if torch_side is not None:
        sides.append(("pytorch", torch_side))

    import resource

    def cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    utils: dict[str, list[float]] = {name: [] for name, _ in sides}
    for _ in range(args.rounds):
        for name, side in sides:
            c = cpu_s()
            wall = side.run(args.steps)
            times[name].append(wall / side.steps_run(args.steps))
            utils[name].append((cpu_s() - c) / wall)

    P = math.ceil(args.seq * 0.15)
    model_fpt = model_flops(main_cfg, 0.15)
    exec_fpt = {
        "xlplastic": model_flops(main_cfg, P / args.seq)["total"],
        "pytorch": model_flops(main_cfg, 1.0)["total"],
    }
    rows = []
    result: dict[str, Any] = {}
    compile_s: dict[str, float] = {}
    for name, side in sides:
        step = statistics.median(times[name])
        tps = tokens_per_step / step
        key = name.replace("-", "_")
        mem = side.memory or {}
        is_jax = name != "pytorch"
        row_fpt = model_flops(side.cfg, 0.15)["total"] if is_jax else model_fpt["total"]
        row = {
            "side": name,
            "tokens_per_s": tps,
            "step_time_s": step,
            "best_step_time_s": min(times[name]),
            "best_tokens_per_s": tokens_per_step / min(times[name]),
            "step_times_s": times[name],
            "cpu_utilization": utils[name],
            "mfu": tps * row_fpt / peak_flops if peak_flops else None,
            "executed_flops_per_token": exec_fpt["xlplastic" if is_jax else "pytorch"],
            "peak_memory_bytes": mem.get("peak_bytes"),
            "memory_measured": mem.get("measured"),
            "final_loss": side.last_loss,
        }
        if is_jax:
            m = side.cfg.model
            row.update(compile_s=side.compile_s, steps_per_call=side.k, dtype=m.dtype,
                       attention_impl=m.attention_impl, scan_layers=getattr(m, "scan_layers", None),
                       compiled_peak_bytes=mem.get("compiled_peak_bytes"))
            compile_s[name] = side.compile_s
            result[f"{key}_compile_s"] = side.compile_s
        rows.append(row)
        result[f"{key}_tokens_per_s"] = tps
        result[f"{key}_step_time_s"] = step
        result[f"{key}_best_tokens_per_s"] = row["best_tokens_per_s"]
        result[f"{key}_cpu_utilization"] = statistics.median(utils[name])
        result[f"{key}_mfu"] = row["mfu"]
        result[f"{key}_peak_memory_bytes"] = mem.get("peak_bytes")
    result.setdefault("pytorch_tokens_per_s", None)
    ratio = result["xlplastic_tokens_per_s"] / result["pytorch_tokens_per_s"] if with_torch else None
    result["ratio"] = ratio
    result["ratio_best"] = (
        result["xlplastic_best_tokens_per_s"] / result["pytorch_best_tokens_per_s"] if with_torch else None
    )
    for name, _ in sides[1:]:
        extra = name.replace("-", "_").removeprefix("xlplastic_")
        if name != "pytorch" and with_torch:
            result[f"ratio_{extra}"] = result[f"xlplastic_{extra}_tokens_per_s"] / result["pytorch_tokens_per_s"]

    import flax
    import optax

    versions = {"jax": jax.__version__, "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__, "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__, "python": platform.python_version()}
    versions.update(_distribution_versions(("jax-cuda", "jax_cuda", "nvidia-cudnn", "libtpu")))
    if with_torch:
        import torch
        import transformers

        versions.update(torch=torch.__version__, transformers=transformers.__version__,
                        torch_cuda=torch.version.cuda,
                        torch_cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    result.update(
        {
            "model_flops_per_token": model_fpt["total"],
            "model_flops_breakdown": model_fpt,
            "executed_flops_per_token": exec_fpt if with_torch else {"xlplastic": exec_fpt["xlplastic"]},
            "flops_formula": FLOPS_FORMULA,
            "peak_flops": peak_flops,
            "peak": peak,
            "mfu_null_reason": None if peak_flops else peak["source"],
            "rows": rows,
            "compile_s": compile_s,
            "xlplastic_memory": sides[0][1].memory,
            "pytorch_memory": torch_side.memory if torch_side else None,
            "pytorch_attn_implementation": torch_side.attn_implementation if torch_side else None,
            "pytorch_device": torch_side.device.type if torch_side else None,
            "pytorch_setup": torch_side.description if torch_side else None,
            "pytorch_num_params": torch_side.num_params if torch_side else None,
            "config": {
                **shape_record(args),
                "config_file": args.config,
                "overrides": args.overrides,
                "variants": {f"xlplastic-{v[0]}": v[1:] for v in args.variant},
                "steps_per_round": args.steps,
                "rounds": args.rounds,
                "warmup": args.warmup,
                "dtype": args.dtype,
                "steps_per_call": k,
                "xla_options": xla_options(args.xla_option),
                "dropout": main_cfg.model.dropout,
                "attention_dropout": main_cfg.model.attention_dropout,
                "attention_impl": main_cfg.model.attention_impl,
                "mask_prob": 0.15,
                "threads": threads,
            },
            "device": device,
            "machine": {
                "cpu": _cpu_model(),
                "cores": os.cpu_count(),
                "platform": platform.platform(),
                "jax_devices": [str(d) for d in jax.devices()],
                "torch_cuda_device": torch.cuda.get_device_name(torch_side.device)
                if torch_side is not None and torch_side.cuda else None,
            },
            "versions": versions,
            "date": _dt.date.today().isoformat(),
            "datetime_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )

    c = result["config"]
    print(
        f"xlplastic bench train: L={c['layers']} D={c['hidden']} heads={c['heads']} F={c['ffn']} V={c['vocab']} "
        f"T={c['seq']} B={c['batch']} dtype={c['dtype']}, {c['rounds']}x{c['steps_per_round']} timed steps, {threads} threads, "
        f"xlplastic {k} steps per call, on {device['device_kind']} ({device['platform']})"
    )
    print(f"model FLOPs/token {_fmt(model_fpt['total'])}  ({FLOPS_FORMULA})")
    print(f"peak {_fmt(peak_flops, 'FLOP/s')}  ({peak['source']})")
    if torch_side is not None:
        print(f"pytorch: {torch_side.description}")
    table_rows = [
        {
            "side": r["side"],
            "tps": f"{r['tokens_per_s']:,.0f}",
            "step": f"{r['step_time_s'] * 1e3:.1f}",
            "best": f"{r['best_step_time_s'] * 1e3:.1f}",
            "util": f"{statistics.median(r['cpu_utilization']):.2f}",
            "mfu": f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-",
            "exec": _fmt(r["executed_flops_per_token"]),
            "mem": _fmt(r["peak_memory_bytes"], "B") if r["peak_memory_bytes"] is not None else "-",
            "compile": f"{r['compile_s']:.1f}" if "compile_s" in r else "-",
            "loss": f"{r['final_loss']:.3f}",
        }
        for r in rows
    ]
    print(
        _table(
            table_rows,
            [("side", "side"), ("tps", "tokens/s"), ("step", "step ms"), ("best", "best ms"), ("util", "cores busy"), ("mfu", "MFU"), ("exec", "exec FLOPs/tok"), ("mem", "peak mem"), ("compile", "compile s"), ("loss", "last loss")],
        )
    )
    if ratio is not None:
        print(f"ratio xlplastic / pytorch tokens/s: {ratio:.2f}x (median windows), {result['ratio_best']:.2f}x (best windows)")
    for name, _ in sides[1:]:
        extra = name.replace("-", "_").removeprefix("xlplastic_")
        if f"ratio_{extra}" in result:
            print(f"ratio {name} / pytorch tokens/s: {result[f'ratio_{extra}']:.2f}x")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
