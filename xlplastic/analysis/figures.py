"""Figures and a short report of an analysis (`results.json` of `xlplastic analyze`)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from xlplastic.paths import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_figures(results: dict, out_dir: Path) -> list[str]:
    """One layer x layer CKA heatmap per pair, and `by_layer.png`: CKA(i, i), sentence retrieval and word
    translation P@1 per layer for every pair. Returns the file names written."""
    plt = _plt()
    files: list[str] = []
    for key, c in results["cka"].items():
        m = c["matrix"]
        fig, ax = plt.subplots(figsize=(4.2 + 0.15 * len(m[0]), 3.6 + 0.15 * len(m)))
        im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", origin="lower")
        a, _, b = key.partition("-")
        ax.set_xlabel(f"layer ({b})")
        ax.set_ylabel(f"layer ({a})")
        ax.set_xticks(range(len(c["layers_b"])), c["layers_b"])
        ax.set_yticks(range(len(c["layers_a"])), c["layers_a"])
        ax.set_title(f"{results['cka_kind']} CKA: {key}")
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        name = f"cka_{_safe(key)}.png"
        save_figure(fig, out_dir / name, dpi=110)
        files.append(name)
    from matplotlib.ticker import MaxNLocator

    panels = [p for p in ("cka", "retrieval", "word_translation") if results.get(p)]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            for key, v in results[panel].items():
                if panel == "cka":
                    ax.plot(v["layers_a"][: len(v["diagonal"])], v["diagonal"], marker="o", label=key)
                    ax.set_title("CKA(layer i, layer i)")
                elif panel == "retrieval":
                    for set_name, r in v.items():
                        ax.plot(r["layers"], r["direct"], marker="o", label=f"{key} {set_name}")
                        if any(p is not None for p in r["procrustes"]):
                            ax.plot(r["layers"], [math.nan if p is None else p for p in r["procrustes"]],
                                    marker="x", linestyle="--", label=f"{key} {set_name} (Procrustes)")
                    ax.set_title("sentence retrieval P@1")
                else:
                    layers = sorted(int(k.split("_")[1]) for k in v["representations"] if k.startswith("layer_"))
                    for how in ("direct", "procrustes"):
                        ys = [(v["representations"][f"layer_{l}"].get(how) or {}).get("csls", math.nan) for l in layers]
                        if any(not math.isnan(y) for y in ys):
                            ax.plot(layers, ys, marker="o" if how == "direct" else "x",
                                    linestyle="-" if how == "direct" else "--", label=f"{key} CSLS ({how})")
                    ax.set_title("word translation P@1 (contextual)")
            ax.set_xlabel("layer (0 = embeddings)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, out_dir / "by_layer.png", dpi=110)
        files.append("by_layer.png")
    return files


def _f(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def write_report(results: dict, out_dir: Path) -> Path:
    lines = ["# Cross-lingual analysis", ""]
    for name, m in results["models"].items():
        lines.append(f"- model `{name}`: {m['run_dir']} (step {m['step']}, {m['layers']} layers incl. embeddings, width {m['width']})")
    lines.append(f"- languages: {', '.join(results['languages'])}; parallel sentences: {results['parallel_sentences']} "
                 f"(first {results['fit_sentences']} fit the Procrustes maps, the rest are evaluated)")
    lines += [f"- note: {n}" for n in results["notes"]]
    if results["cka"]:
        lines += ["", f"## CKA ({results['cka_kind']}) and sentence retrieval by layer", ""]
        for key, c in results["cka"].items():
            r = results["retrieval"].get(key, {}).get("parallel")
            lines += [f"### {key}", "", "| layer | CKA(i, i) | retrieval P@1 | with Procrustes |", "|---:|---:|---:|---:|"]
            for i, d in enumerate(c["diagonal"]):
                lines.append(f"| {c['layers_a'][i]} | {_f(d)} | {_f(r['direct'][i]) if r else '–'} | "
                             f"{_f(r['procrustes'][i]) if r else '–'} |")
            if "retrieval_correlation" in c:
                lines.append(f"\nPearson r between CKA(i, i) and retrieval P@1 over layers: {c['retrieval_correlation']:.3f}")
            lines.append(f"\n![CKA {key}](cka_{_safe(key)}.png)\n")
    for key, sets in results["retrieval"].items():
        for set_name, r in sets.items():
            if set_name == "parallel":
                continue
            lines += [f"### Retrieval {key} on {set_name} ({r['sentences']} pairs)", "",
                      "| layer | P@1 | with Procrustes |", "|---:|---:|---:|"]
            lines += [f"| {l} | {_f(d)} | {_f(p)} |" for l, d, p in zip(r["layers"], r["direct"], r["procrustes"])]
            lines.append("")
    if results["word_translation"]:
        lines += ["## Word translation (MUSE P@1)", "", "| pair | representation | mapping | NN | CSLS | coverage |",
                  "|---|---|---|---:|---:|---:|"]
        for key, w in results["word_translation"].items():
            for rep_name, r in w["representations"].items():
                for how in ("direct", "procrustes"):
                    if r.get(how):
                        lines.append(f"| {key} | {rep_name} | {how} | {_f(r[how].get('nn'))} | {_f(r[how].get('csls'))} | "
                                     f"{_f(r.get('coverage'))} |")
        lines.append("")
    if results["word_alignment"]:
        lines += ["## Contextual word alignment (share of source words whose nearest target word is the gold one)", ""]
        for key, a in results["word_alignment"].items():
            lines += [f"### {key} ({a.get('pairs_test', 0)} held-out pairs; gold: {a.get('gold')})", "",
                      "| layer | direct | with Procrustes |", "|---:|---:|---:|"]
            lines += [f"| {l} | {_f(d)} | {_f(p)} |" for l, d, p in zip(a["layers"], a["direct"], a["procrustes"])]
            lines.append("")
    if "by_layer.png" in results.get("figures", []):
        lines.append("![by layer](by_layer.png)")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
