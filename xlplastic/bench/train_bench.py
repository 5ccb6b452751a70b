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

Peak: unless `--peak-tflops` is given, the best of 10 timed 2048x2048x2048 float32 matmuls in JAX and in
PyTorch (with the same threads) on this machine, measured at start-up: an achievable dense-GEMM peak,
not the data-sheet number.

Memory: xlplastic = the compiled step's `memory_analysis()` (arguments + outputs - donated aliases +
temporaries, i.e. state + batch + metrics + activations/gradients, per device); PyTorch = growth of the
process RSS over its value just before the model is built, sampled every 2 ms during the warm-up steps
(parameters, gradients, AdamW moments, activations and whatever the allocator keeps).
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
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--attention-impl", choices=["xla", "cudnn"], default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores JAX uses)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: measured matmul peak)")
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


class XlplasticSide:
    def __init__(self, args, dtype: str, batches: list[np.ndarray], steps_per_call: int = 1):
        import jax

        from xlplastic.config import Config, DataConfig, MeshConfig, OptimizerConfig, ScheduleConfig, TrainConfig
        from xlplastic.sharding import make_mesh
        from xlplastic.train import Specials, build_trainer

        self.jax = jax
        cfg = Config(
            name="bench",
            model=model_config(
                args,
                dropout=args.dropout,
                attention_dropout=args.dropout,
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
        self.cfg = cfg
        self.mesh = make_mesh(cfg.mesh, jax.devices()[:1])
        self.trainer = build_trainer(cfg, self.mesh, args.vocab, Specials(pad=PAD, mask=MASK, all_ids=SPECIAL_IDS))
        self.k = steps_per_call
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
                "peak_bytes": arg + out - alias + temp,
                "measured": "compiled step memory_analysis(): argument + output - alias (donated) + temp, per device",
            }
        self.i = 0

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
# PyTorch side (HF transformers RobertaForMaskedLM, eager, default attention implementation)


class TorchSide:
    def __init__(self, args, batches: list[np.ndarray], threads: int):
        import torch
        from transformers import RobertaConfig, RobertaForMaskedLM

        self.torch = torch
        torch.set_num_threads(threads)
        torch.manual_seed(args.seed)
        self.sampler = RssSampler()
        self.rss_before = self.sampler.rss()
        config = RobertaConfig(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            intermediate_size=args.ffn,
            hidden_act="gelu",  # exact erf GELU, as xlplastic's approximate=False
            hidden_dropout_prob=args.dropout,
            attention_probs_dropout_prob=args.dropout,
            max_position_embeddings=args.max_positions,
            type_vocab_size=1,  # RoBERTa: one (constant) token type; xlplastic has none
            initializer_range=0.02,
            layer_norm_eps=1e-5,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
            tie_word_embeddings=True,
        )
        self.model = RobertaForMaskedLM(config)
        self.model.train()
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None)
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        from xlplastic.config import OptimizerConfig

        o = OptimizerConfig()
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr,
            betas=(o.b1, o.b2),
            eps=o.eps,
        )
        self.batches = batches
        self.vocab = args.vocab
        self.specials = torch.tensor(SPECIAL_IDS)
        self.gen = torch.Generator().manual_seed(args.seed)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.i = 0

    def _mask(self, tokens):
        """DataCollatorForLanguageModeling's recipe: 15% of non-special tokens predicted, 80/10/10."""
        torch, g = self.torch, self.gen
        labels = tokens.clone()
        special = torch.isin(tokens, self.specials)
        prob = torch.full(tokens.shape, 0.15).masked_fill_(special, 0.0)
        picked = torch.bernoulli(prob, generator=g).bool()
        labels[~picked] = -100
        inputs = tokens.clone()
        to_mask = torch.bernoulli(torch.full(tokens.shape, 0.8), generator=g).bool() & picked
        inputs[to_mask] = MASK
        to_rand = torch.bernoulli(torch.full(tokens.shape, 0.5), generator=g).bool() & picked & ~to_mask
        inputs[to_rand] = torch.randint(len(SPECIAL_IDS), self.vocab, tokens.shape, generator=g)[to_rand]
        return inputs, labels

    def _step(self, b: np.ndarray) -> float:
        tokens = self.torch.from_numpy(b).long()
        inputs, labels = self._mask(tokens)
        out = self.model(input_ids=inputs, attention_mask=tokens != PAD, labels=labels)
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    def steps_run(self, n: int) -> int:
        return n

    def run(self, n: int) -> float:
        t = time.perf_counter()
        loss = None
        for _ in range(n):
            loss = self._step(self.batches[self.i % len(self.batches)])
            self.i += 1
        dt = time.perf_counter() - t
        self.last_loss = float(loss)
        return dt

    def warmup(self, n: int) -> None:
        with self.sampler:
            self.run(n)
        self.memory = {
            "peak_bytes": self.sampler.peak - self.rss_before,
            "measured": "peak process RSS growth over the RSS before the model was built, sampled every 2 ms during warm-up",
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_json_path(args.json)
    if args.ffn is None:
        args.ffn = 4 * args.hidden
    import jax

    threads = resolve_threads(args.threads)
    with_torch = not args.skip_torch
    tokens_per_step = args.batch * args.seq

    if args.peak_tflops:
        peak = {"peak_flops": args.peak_tflops * 1e12, "source": "given with --peak-tflops"}
    else:
        peak = measure_peak_flops(threads, with_torch, n=args.peak_size)
    peak_flops = peak["peak_flops"]

    n_batches = 8
    batches = random_batches(n_batches, args.batch, args.seq, args.vocab, args.seed)

    torch_side = None
    if with_torch:  # first, so that its RSS growth is not hidden by memory JAX already holds
        torch_side = TorchSide(args, batches, threads)
        torch_side.warmup(args.warmup)
    k = args.steps_per_call
    sides: list[tuple[str, Any]] = [("xlplastic", XlplasticSide(args, args.dtype, batches, k))]
    sides[0][1].run(args.warmup)
    if k > 1:
        sides.append(("xlplastic-single", XlplasticSide(args, args.dtype, batches, 1)))
        sides[-1][1].run(args.warmup)
    if args.extra_bf16 and args.dtype != "bfloat16":
        sides.append(("xlplastic-bf16", XlplasticSide(args, "bfloat16", batches, k)))
        sides[-1][1].run(args.warmup)
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
    model_fpt = flops_per_token(args.layers, args.hidden, args.ffn, args.vocab, args.seq, 0.15)
    exec_fpt = {
        "xlplastic": flops_per_token(args.layers, args.hidden, args.ffn, args.vocab, args.seq, P / args.seq)["total"],
        "pytorch": flops_per_token(args.layers, args.hidden, args.ffn, args.vocab, args.seq, 1.0)["total"],
    }
    rows = []
    result: dict[str, Any] = {}
    for name, side in sides:
        step = statistics.median(times[name])
        tps = tokens_per_step / step
        key = name.replace("-", "_")
        mem = side.memory or {}
        row = {
            "side": name,
            "tokens_per_s": tps,
            "step_time_s": step,
            "best_step_time_s": min(times[name]),
            "best_tokens_per_s": tokens_per_step / min(times[name]),
            "step_times_s": times[name],
            "cpu_utilization": utils[name],
            "mfu": tps * model_fpt["total"] / peak_flops,
            "executed_flops_per_token": exec_fpt["pytorch" if name == "pytorch" else "xlplastic"],
            "peak_memory_bytes": mem.get("peak_bytes"),
            "final_loss": side.last_loss,
        }
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
    for extra in ("bf16", "single"):
        if f"xlplastic_{extra}_tokens_per_s" in result and with_torch:
            result[f"ratio_{extra}"] = result[f"xlplastic_{extra}_tokens_per_s"] / result["pytorch_tokens_per_s"]

    import flax
    import optax

    versions = {"jax": jax.__version__, "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__, "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__, "python": platform.python_version()}
    if with_torch:
        import torch
        import transformers

        versions.update(torch=torch.__version__, transformers=transformers.__version__)
    result.update(
        {
            "model_flops_per_token": model_fpt["total"],
            "model_flops_breakdown": model_fpt,
            "executed_flops_per_token": exec_fpt if with_torch else {"xlplastic": exec_fpt["xlplastic"]},
            "flops_formula": FLOPS_FORMULA,
            "peak_flops": peak_flops,
            "peak": peak,
            "rows": rows,
            "xlplastic_memory": sides[0][1].memory,
            "xlplastic_compile_s": sides[0][1].compile_s,
            "pytorch_memory": torch_side.memory if torch_side else None,
            "pytorch_attn_implementation": torch_side.attn_implementation if torch_side else None,
            "pytorch_num_params": torch_side.num_params if torch_side else None,
            "config": {
                **shape_record(args),
                "steps_per_round": args.steps,
                "rounds": args.rounds,
                "warmup": args.warmup,
                "dtype": args.dtype,
                "steps_per_call": k,
                "xla_options": xla_options(args.xla_option),
                "dropout": args.dropout,
                "mask_prob": 0.15,
                "threads": threads,
            },
            "machine": {
                "cpu": _cpu_model(),
                "cores": os.cpu_count(),
                "platform": platform.platform(),
                "jax_devices": [str(d) for d in jax.devices()],
            },
            "versions": versions,
            "date": _dt.date.today().isoformat(),
        }
    )

    c = result["config"]
    print(
        f"xlplastic bench train: L={c['layers']} D={c['hidden']} heads={c['heads']} F={c['ffn']} V={c['vocab']} "
        f"T={c['seq']} B={c['batch']} dtype={c['dtype']}, {c['rounds']}x{c['steps_per_round']} timed steps, {threads} threads, "
        f"xlplastic {k} steps per call"
    )
    print(f"model FLOPs/token {_fmt(model_fpt['total'])}  ({FLOPS_FORMULA})")
    print(f"peak {_fmt(peak_flops, 'FLOP/s')}  ({peak['source']})")
    table_rows = [
        {
            "side": r["side"],
            "tps": f"{r['tokens_per_s']:,.0f}",
            "step": f"{r['step_time_s'] * 1e3:.1f}",
            "best": f"{r['best_step_time_s'] * 1e3:.1f}",
            "util": f"{statistics.median(r['cpu_utilization']):.2f}",
            "mfu": f"{100 * r['mfu']:.1f}%",
            "exec": _fmt(r["executed_flops_per_token"]),
            "mem": _fmt(r["peak_memory_bytes"], "B") if r["peak_memory_bytes"] is not None else "-",
            "loss": f"{r['final_loss']:.3f}",
        }
        for r in rows
    ]
    print(
        _table(
            table_rows,
            [("side", "side"), ("tps", "tokens/s"), ("step", "step ms"), ("best", "best ms"), ("util", "cores busy"), ("mfu", "MFU"), ("exec", "exec FLOPs/tok"), ("mem", "peak mem"), ("loss", "last loss")],
        )
    )
    if ratio is not None:
        print(f"ratio xlplastic / pytorch tokens/s: {ratio:.2f}x (median windows), {result['ratio_best']:.2f}x (best windows)")
    for extra in ("single", "bf16"):
        if f"ratio_{extra}" in result:
            print(f"ratio xlplastic-{extra} / pytorch tokens/s: {result[f'ratio_{extra}']:.2f}x")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
