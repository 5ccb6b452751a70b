"""A short human-readable report of a finished run: a table of final figures and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xlplastic.config import Config
from xlplastic.paths import save_figure


def plot_losses(rows: list[dict[str, Any]], path: Path) -> bool:
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot(*zip(*train), label="train MLM loss", lw=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out MLM loss", ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)  # a run folder may be a bucket
    return True


def write_report(run_dir: Path, cfg: Config, results: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    f = results["final"]
    has_plot = plot_losses(rows, run_dir / "loss.png")
    m = cfg.model

    def fmt(v, spec=".4f"):
        return "–" if v is None else format(v, spec)

    lines = [
        f"# {cfg.name}",
        "",
        f"Masked-LM pretraining, {m.num_layers} layers × d={m.hidden_size} ({m.norm}-LN, {m.dtype} compute), "
        f"{f['num_params'] / 1e6:.2f}M parameters, sequence {cfg.data.seq_len}, batch {cfg.train.batch_size}, "
        f"{f['devices']} device(s) in {f['processes']} process(es).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| steps | {f['step']} |",
        f"| final train loss | {fmt(f['loss'])} |",
        f"| held-out loss | {fmt(f['eval_loss'])} |",
        f"| held-out accuracy | {fmt(f['eval_accuracy'])} |",
        f"| held-out perplexity | {fmt(f['eval_perplexity'], '.2f')} |",
        f"| median step time | {fmt(f['median_step_time_s'], '.4f')} s |",
        f"| throughput | {fmt(f['tokens_per_s'], ',.0f')} tokens/s |",
        f"| wall time | {fmt(f['wall_time_s'], '.1f')} s |",
        "",
    ]
    if has_plot:
        lines += ["![loss](loss.png)", ""]
    lines += ["Files: `config.yaml` (resolved config), `metrics.jsonl`, `tensorboard/`, `checkpoints/`, `results.json`.", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
