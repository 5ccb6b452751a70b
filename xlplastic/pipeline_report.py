"""Report of a relearning-pipeline experiment: standard vs forgetting models over seeds and budgets.

Markdown tables (mean ± std over seeds) and PNG figures; matplotlib (Agg) is imported lazily so this
module stays cheap and head-less. A figure that cannot be drawn is skipped with a warning: a plot is
never worth failing an experiment that has already finished.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from xlplastic.paths import as_path, save_figure

log = logging.getLogger(__name__)

_FIXED_COLOURS = {"standard": "tab:blue", "forgetting": "tab:orange"}
_OTHER_COLOURS = ["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
_CAPTIONS = {
    "headline.png": ("headline: source, zero-shot and oracle", "The headline task per model: the source-language score, "
                     "zero-shot on the new language with relearned embeddings (dots: single seeds and draws), and the oracle "
                     "(the same body with the gold embeddings) — the gap from zero-shot up to the oracle is what relearning "
                     "fell short of; the dashed line is chance (the majority label)."),
    "pretrain_loss.png": ("pretraining loss", "Pretraining MLM loss per model and seed (raw, unsmoothed); faint vertical "
                          "lines mark embedding resets — look for the spike after each reset and how fast it recovers."),
    "adaptation_loss.png": ("language-adaptation loss", "Language-adaptation loss (only the embeddings train) per target "
                            "language and budget — a curve that falls lower and sooner means a body that relearns faster."),
    "zero_shot.png": ("zero-shot scores", "Zero-shot target-language scores: bars are means over seeds, whiskers min–max, "
                      "dots single seeds — compare forgetting with standard inside each group."),
    "budget_curve.png": ("score vs adaptation budget", "Zero-shot score against the language-adaptation token budget "
                         "(log scale), mean with a min–max band over seeds and draws, the oracle dashed; beside it the held-out MLM "
                         "loss of the relearned embeddings — the paper's claim is a gap widest at small budgets."),
}


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _stats(values: list) -> dict | None:
    """Mean, sample std, min and max over the finite values: a NaN seed is dropped, not averaged in."""
    xs = [x for x in map(_num, values) if math.isfinite(x)]
    if not xs:
        return None
    n, mean = len(xs), sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(xs), "max": max(xs), "n": n, "values": xs}


def paired_difference(rows: list[dict], base: str = "standard", other: str = "forgetting") -> dict | None:
    """`other` − `base` paired by pretraining seed: each seed's draws are averaged per model first, so the
    std is the spread over seeds (what the paper's claim has to survive), not over draws. None without a
    seed both models have."""
    per: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if math.isfinite(v := _num(r.get("value"))):
            per[r.get("seed")][str(r.get("model"))].append(v)
    d = [sum(m[other]) / len(m[other]) - sum(m[base]) / len(m[base]) for _, m in sorted(per.items(), key=lambda x: str(x[0]))
         if m.get(other) and m.get(base)]
    if not d:
        return None
    s = _stats(d)
    return {"mean": s["mean"], "std": s["std"], "n": s["n"], "ahead": sum(x > 0 for x in d), "values": d}


def _diff_cell(rows: list[dict]) -> str:
    """`+0.1025 ± 0.0790 (6/6 seeds ahead)`: the paired difference with its seed spread beside it."""
    d = paired_difference(rows)
    if d is None:
        return "–"
    return f"{d['mean']:+.4f}" + (f" ± {d['std']:.4f}" if d["n"] > 1 else "") + f" ({d['ahead']}/{d['n']} seed" + (
        "s" if d["n"] > 1 else "") + " ahead)"


def differences(summary: list[dict], base: str = "standard", other: str = "forgetting") -> list[dict]:
    """results.json `differences`: one row per (stage, task, metric, language, budget) both models have."""
    if not {base, other} <= {str(r.get("model")) for r in summary}:
        return []
    acc: dict = defaultdict(list)
    for r in summary:
        if r.get("stage") in ("task_adapt", "oracle", "evaluate"):
            acc[(r.get("stage"), *_key(r))].append(r)
    out = []
    for (stage, task, metric, lang, budget), rows in acc.items():
        if d := paired_difference(rows, base, other):
            out.append({"models": f"{other} - {base}", "stage": stage, "task": task, "metric": metric,
                        "language": lang, "budget": budget, "mean": d["mean"], "seed_std": d["std"],
                        "seeds": d["n"], "seeds_ahead": d["ahead"]})
    return out


def _order(names) -> list[str]:
    """standard, forgetting, then the rest by first appearance: stable columns and colours."""
    seen = list(dict.fromkeys(names))
    head = [m for m in _FIXED_COLOURS if m in seen]
    return head + [m for m in seen if m not in head]


def _budget(b: Any, long: bool = False) -> str:
    x = _num(b)
    if not math.isfinite(x):
        return "–" if b is None else str(b)
    div, unit = next(((d, u) for d, u in ((1e9, "B"), (1e6, "M"), (1e3, "k")) if x >= d), (1, ""))
    return f"{int(x):,}" if long else f"{x / div:g}{unit}"


def _key(r: dict) -> tuple:
    return str(r.get("task") or ""), str(r.get("metric") or ""), str(r.get("language") or ""), r.get("budget")


def _group(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    """(task, metric, language, budget) -> model -> stats over seeds, sorted for stable output."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        acc[_key(r)][str(r.get("model", "?"))].append(r.get("value"))
    order = sorted(acc, key=lambda k: (*k[:3], -1.0 if k[3] is None else _num(k[3])))
    return {k: {m: s for m, vs in acc[k].items() if (s := _stats(vs))} for k in order}


def _cell(s: dict | None) -> str:
    if not s:
        return "–"
    return f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s["n"] > 1 else "") + f" (n={s['n']})"


def _table(rows: list[dict]) -> list[str]:
    """One row per task/metric/language/budget, one column per model (+ forgetting − standard, paired by seed)."""
    models = _order(str(r.get("model", "?")) for r in rows)
    diff = "standard" in models and "forgetting" in models
    head = ["task", "metric", "language", "budget", *models] + (["forgetting − standard"] if diff else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, per in _group(rows).items():
        task, metric, lang, budget = key
        cells = [task or "–", metric or "–", lang or "–", _budget(budget, long=True)]
        cells += [_cell(per.get(m)) for m in models]
        if diff:
            cells.append(_diff_cell([r for r in rows if _key(r) == key]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _pick(rows: list[dict], task: str, metric: str, **where) -> list[dict]:
    return [r for r in rows if r.get("task") == task and r.get("metric") == metric
            and all(r.get(k) == v for k, v in where.items())]


def _headline_parts(summary: list[dict], headline: dict) -> tuple[list[str], list[tuple], dict]:
    """Models, columns (label, kind, language, stats per model, rows) and chance per target for the headline."""
    task, metric, src = headline["task"], headline["metric"], headline["source"]
    stage_rows = lambda s: [r for r in summary if r.get("stage") == s]  # noqa: E731
    zero, oracle = _pick(stage_rows("evaluate"), task, metric), _pick(stage_rows("oracle"), task, metric)
    models = _order([str(r.get("model")) for r in _pick(stage_rows("task_adapt"), task, metric) + zero + oracle])
    per_model = lambda rows: {m: _stats([r.get("value") for r in rows if str(r.get("model")) == m]) for m in models}  # noqa: E731
    column = lambda label, kind, lang, rows: (label, kind, lang, per_model(rows), rows)  # noqa: E731
    columns = [column(f"source ({src})", "source", None, _pick(stage_rows("task_adapt"), task, metric, language=src))]
    targets = list(dict.fromkeys(str(r.get("language")) for r in zero + oracle))
    for lang in targets:
        for b in sorted({r.get("budget") for r in zero if r.get("language") == lang}, key=_num):
            columns.append(column(f"zero-shot {lang}, {_budget(b)} tokens", "zero-shot", lang,
                                  _pick(zero, task, metric, language=lang, budget=b)))
        if any(r.get("language") == lang for r in oracle):
            columns.append(column(f"oracle {lang}", "oracle", lang, _pick(oracle, task, metric, language=lang)))
    return models, columns, dict(headline.get("chance") or {})


def _headline(summary: list[dict], headline: dict | None) -> list[str]:
    """The table and sentence a reader needs first: per model, source / zero-shot / oracle, and what they mean."""
    if not headline:
        return []
    models, columns, chance = _headline_parts(summary, headline)
    if len(columns) < 2 or not models:
        return []
    task, metric = headline["task"], headline["metric"]
    head = ["model"] + [c[0] for c in columns]
    lines = [f"## Headline: {task} {metric}" + (f" ({headline['tokenizer']} tokenizer)" if headline.get("tokenizer") else ""),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        lines.append("| " + " | ".join([m] + [_cell(c[3].get(m)) for c in columns]) + " |")
    if "standard" in models and "forgetting" in models:
        lines.append("| forgetting − standard (paired by seed) | " + " | ".join(_diff_cell(c[4]) for c in columns) + " |")
    if chance:
        lines.append("| chance (majority label) | " + " | ".join(
            f"{chance[c[2]]:.4f}" if c[2] in chance else (f"{chance[headline['source']]:.4f}" if c[1] == "source"
                                                          and headline["source"] in chance else "–")
            for c in columns) + " |")
    lines += ["", _reading(models, columns, chance), ""]
    return lines


def _reading(models: list[str], columns: list[tuple], chance: dict) -> str:
    """One sentence on what the numbers mean, computed from them (never a canned conclusion)."""
    out = ["**Reading:** *source* is what the fine-tuned body scores on the language it learnt; *oracle* puts the gold "
           "new-language embeddings into that body, the ceiling any relearning can reach; *zero-shot* puts the relearned ones in"]
    zs = [c for c in columns if c[1] == "zero-shot"]
    orc = {c[2]: c[3] for c in columns if c[1] == "oracle"}
    if zs:
        label, _, lang, per, _ = zs[0]
        parts = []
        for m in models:
            z, o, ch = per.get(m), (orc.get(lang) or {}).get(m), chance.get(lang)
            if not z:
                continue
            part = f"{m} {z['mean']:.3f}" + (f" ± {z['std']:.3f} (n={z['n']})" if z["n"] > 1 else "")
            if o and ch is not None and o["mean"] - ch > 1e-6:
                part += f", {100 * (z['mean'] - ch) / (o['mean'] - ch):.0f}% of the way from chance to its oracle"
            parts.append(part)
        if parts:
            out.append(f": at {label.split(', ', 1)[1]} on {lang}, " + "; ".join(parts))
    src = columns[0][3]
    gaps = [abs(o["mean"] - src[m]["mean"]) for per in orc.values() for m, o in per.items() if o and src.get(m)]
    if gaps:
        out.append(f". The oracle is within {max(gaps):.3f} of the source score" + (
            ", so the task body carries over intact and any shortfall is relearning's" if max(gaps) <= 0.02 else
            ": the target is not a one-to-one re-spelling of the source, or the assembly lost something"))
    return "".join(out) + "."


def _plot_headline(path: Path, summary: list[dict], headline: dict | None, colours: dict) -> bool:
    if not headline:
        return False
    models, columns, chance = _headline_parts(summary, headline)
    if len(columns) < 2 or not models:
        return False
    fig, (ax,) = _figure(1, size=(max(5.0, 1.6 * len(columns) + 2), 3.8))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        pts = [(x, c[3].get(m)) for x, c in enumerate(columns) if c[3].get(m)]
        xs = [x - 0.4 + width * (i + 0.5) for x, _ in pts]
        ax.bar(xs, [s["mean"] for _, s in pts], width * 0.9, color=colours.get(m, "gray"), alpha=0.75, label=m,
               yerr=[[s["mean"] - s["min"] for _, s in pts], [s["max"] - s["mean"] for _, s in pts]], capsize=3)
        for x, (_, s) in zip(xs, pts):
            ax.scatter([x] * s["n"], s["values"], color="black", s=9, zorder=3)
    for x, c in enumerate(columns):
        ch = chance.get(c[2] if c[2] is not None else headline["source"])
        if ch is not None:
            ax.hlines(ch, x - 0.45, x + 0.45, colors="black", linestyles="dashed", lw=1,
                      label="chance" if x == 0 else "_nolegend_")
    ax.set_xticks(range(len(columns)), [c[0].replace(", ", "\n") for c in columns], fontsize=8)
    ax.set(ylabel=headline["metric"], title=f"{headline['task']}: source, zero-shot, oracle")
    return _save(fig, path, [ax])


def _figure(n: int, max_panels: int = 6, size: tuple[float, float] = (4.4, 3.3)):
    """Up to `max_panels` axes in rows of three (a crowded figure helps less than a missing panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, max_panels)
    ncols, nrows = min(3, n), -(-n // 3)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), dpi=110, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def _save(fig, path: Path, axes: list) -> bool:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def _curve(ax, rows: list[dict], colour: str, label: str, labelled: set[str], lw: float = 1.0) -> None:
    """Raw curve, no smoothing (the spikes after a reset are the point); each model named once per legend."""
    pts = [(r["step"], _num(r.get("loss"))) for r in rows if "step" in r]
    if pts:
        ax.plot(*zip(*pts), color=colour, lw=lw, alpha=0.85, label=label if label not in labelled else "_nolegend_")
        labelled.add(label)


def _plot_pretrain(path: Path, runs: dict, resets: dict, colours: dict) -> bool:
    if not (runs := {k: v for k, v in runs.items() if v}):
        return False
    fig, (ax,) = _figure(1, size=(8, 4.2))
    labelled: set[str] = set()
    order = list(colours)
    for key, rows in sorted(runs.items(), key=lambda kv: (order.index(kv[0].rsplit("/", 1)[0]), kv[0])):
        model = key.rsplit("/", 1)[0]
        _curve(ax, rows, colours[model], model, labelled, lw=0.8)
        steps = resets.get(key) or [r["step"] for r in rows if _num(r.get("reset", 0)) > 0]
        if steps:
            ax.vlines(steps, 0, 1, transform=ax.get_xaxis_transform(), color=colours[model], alpha=0.2,
                      lw=0.8, label="embedding reset" if "reset" not in labelled else "_nolegend_")
            labelled.add("reset")
    ax.set(xlabel="step", ylabel="MLM loss (nats)", title="pretraining")
    return _save(fig, path, [ax])


def _plot_adaptation(path: Path, runs: dict, colours: dict) -> bool:
    panels: dict = defaultdict(list)
    for key, rows in runs.items():
        parts = key.rsplit("/", 3)
        if len(parts) == 4 and rows:
            panels[(parts[2], _num(parts[3]))].append((parts[0], rows))
    if not panels:
        return False
    fig, axes = _figure(len(panels))
    for ax, (lang, budget) in zip(axes, sorted(panels)):
        labelled: set[str] = set()
        for model, rows in sorted(panels[(lang, budget)], key=lambda mr: list(colours).index(mr[0])):
            _curve(ax, rows, colours[model], model, labelled)
        ax.set(xlabel="step", ylabel="MLM loss", title=f"{lang}, {_budget(budget)} tokens")
    return _save(fig, path, axes)


def _plot_zero_shot(path: Path, rows: list[dict], colours: dict) -> bool:
    panels: dict = defaultdict(dict)
    for (task, metric, lang, budget), per in _group(rows).items():
        if per:
            panels[(task, metric)][(lang, budget)] = per
    if not panels:
        return False
    models = _order(str(r.get("model", "?")) for r in rows)
    width = 0.8 / len(models)
    fig, axes = _figure(len(panels), max_panels=9)
    for ax, ((task, metric), cells) in zip(axes, panels.items()):
        for i, model in enumerate(models):
            stats = [(x, per[model]) for x, per in enumerate(cells.values()) if model in per]
            if not stats:
                continue
            xs = [x - 0.4 + width * (i + 0.5) for x, _ in stats]
            means = [s["mean"] for _, s in stats]
            err = [[s["mean"] - s["min"] for _, s in stats], [s["max"] - s["mean"] for _, s in stats]]
            ax.bar(xs, means, width * 0.9, yerr=err, capsize=3, color=colours.get(model, "gray"), alpha=0.75, label=model)
            for x, (_, s) in zip(xs, stats):
                ax.scatter([x] * s["n"], s["values"], color="black", s=9, zorder=3)
        several = len({b for _, b in cells}) > 1
        ax.set_xticks(range(len(cells)), [lang + (f"\n{_budget(b)}" if several else "") for lang, b in cells])
        ax.set(ylabel=metric, title=f"{task} (zero-shot)")
    return _save(fig, path, axes)


def _plot_budget_curve(path: Path, rows: list[dict], colours: dict, oracle: list[dict] | None = None) -> bool:
    """Score against budget per (task, metric, language) panel; the oracle, where there is one, as a dashed line."""
    ceiling = {(t, m, l): per for (t, m, l, _), per in _group(oracle or []).items()}
    lines: dict = defaultdict(lambda: defaultdict(list))  # (task, metric, language) -> model -> [(budget, stats)]
    for (task, metric, lang, budget), per in _group(rows).items():
        if _num(budget) > 0:
            for model, s in per.items():
                lines[(task, metric, lang)][model].append((_num(budget), s))
    if len({b for per in lines.values() for pts in per.values() for b, _ in pts}) < 2:
        return False
    fig, axes = _figure(len(lines))
    for ax, ((task, metric, lang), per) in zip(axes, lines.items()):
        for model in _order(per):
            pts = sorted(per[model], key=lambda bs: bs[0])
            xs = [b for b, _ in pts]
            ax.plot(xs, [s["mean"] for _, s in pts], "o-", color=colours.get(model, "gray"), label=model)
            lo, hi = [s["min"] for _, s in pts], [s["max"] for _, s in pts]
            ax.fill_between(xs, lo, hi, color=colours.get(model, "gray"), alpha=0.2)
            if (o := ceiling.get((task, metric, lang), {}).get(model)) is not None:
                ax.axhline(o["mean"], color=colours.get(model, "gray"), ls="--", lw=1, label=f"{model} oracle")
        ax.set_xscale("log")
        budgets = sorted({b for pts in per.values() for b, _ in pts})
        ax.set_xticks(budgets, [_budget(b) for b in budgets])
        ax.minorticks_off()
        ax.set(xlabel="adaptation budget (tokens)", ylabel=metric, title=f"{task} / {lang}")
    return _save(fig, path, axes)


def _draw(path: Path, plot: Callable[..., bool], *args) -> bool:
    """Draw one figure, or skip it: a stale PNG from an earlier call is removed so the report never embeds it."""
    path.unlink(missing_ok=True)
    try:
        return bool(plot(path, *args))
    except Exception as e:  # noqa: BLE001 - a figure is never worth failing a finished experiment
        log.warning("pipeline report: skipped %s (%s: %s)", path.name, type(e).__name__, e)
        if plt := sys.modules.get("matplotlib.pyplot"):  # do not leak a half-drawn figure
            plt.close("all")
        path.unlink(missing_ok=True)
        return False


_CLASS_NOTE = ("How much of each embedding matrix's geometry is its words' gold classes (UPOS): `class_r2` is "
               "the share of the variance of the unit-normalised rows explained by the class means, `class_1nn` "
               "the fraction of words whose nearest other word (cosine) has the same class, and `source_class_1nn` "
               "the fraction whose nearest source-language word of the same pretrained body has the same class "
               "(the oracle's is 1 by construction): whether the rows sit where the task body learnt each class, "
               "not only in tidy clusters of their own. A relearned matrix far below the oracle's has not "
               "recovered the classes a structural task body reads.")


def write_pipeline_report(
    run_dir: Path, name: str, summary: list[dict], curves: dict, notes: list[str] | None = None,
    headline: dict | None = None, class_structure: list[dict] | None = None,
) -> Path:
    """Write tables, figures and report.md for one pipeline experiment into run_dir; return the report path.

    `headline` ({task, metric, source, chance: {language: score}, tokenizer}) names the task the report leads
    with: one table of source / zero-shot / oracle per model, one plot, one sentence on what they mean.
    `class_structure`: rows scoring the embedding matrices of the stages on gold word classes (own section)."""
    run_dir = as_path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary, curves = list(summary or []), dict(curves or {})
    embedding_rows = list(class_structure or [])
    stage = {s: [r for r in summary if r.get("stage") == s]
             for s in ("pretrain", "analyze", "language_adapt", "task_adapt", "oracle", "evaluate")}
    pre, adapt, resets = (c if isinstance(c := curves.get(k), dict) else {}
                          for k in ("pretrain", "language_adapt", "reset_steps"))
    models = _order([str(r.get("model", "?")) for r in summary] + [k.rsplit("/", 1)[0] for k in pre]
                    + [k.rsplit("/", 3)[0] for k in adapt])
    others = iter(_OTHER_COLOURS * (len(models) // len(_OTHER_COLOURS) + 1))
    colours = {m: _FIXED_COLOURS.get(m) or next(others) for m in models}
    written = [p.name for p, fn, *args in [
        (run_dir / "headline.png", _plot_headline, summary, headline, colours),
        (run_dir / "pretrain_loss.png", _plot_pretrain, pre, resets, colours),
        (run_dir / "adaptation_loss.png", _plot_adaptation, adapt, colours),
        (run_dir / "zero_shot.png", _plot_zero_shot, stage["evaluate"], colours),
        (run_dir / "budget_curve.png", _plot_budget_curve,
         stage["evaluate"] + [r for r in stage["language_adapt"] if r.get("metric") == "loss"], colours, stage["oracle"]),
    ] if _draw(p, fn, *args)]

    relearning = bool(stage["language_adapt"] or stage["evaluate"])
    intro = ("Relearning pipeline (active forgetting): pretrain → language adaptation (embeddings only) "
             "→ source-language task fine-tuning → zero-shot evaluation on the target languages. ") if relearning else (
             "Pretraining variants → cross-lingual analysis of each pretrained model → source-language task "
             "fine-tuning, scored on every test language (zero-shot on all but the source). ")
    lines = [f"# {name}", "", intro + "Cells are mean ± sample std over seeds and new-embedding draws (n = number of "
             "runs with a finite value); a difference is paired by pretraining seed (each seed's draws averaged "
             "first), with its sample std over seeds and the seeds on which forgetting is ahead.", ""]
    top = _headline(summary, headline)
    if top:
        lines += top
        if "headline.png" in written:
            lines += ["![" + _CAPTIONS["headline.png"][0] + "](headline.png)", "", _CAPTIONS["headline.png"][1], ""]
    if notes:
        lines += [f"- {n}" for n in notes] + [""]
    sections = [("Zero-shot results (target languages)", stage["evaluate"]),
                ("Source-language task scores (task_adapt)", stage["task_adapt"]),
                ("Oracle assembly: the task body with gold new-language embeddings (oracle)", stage["oracle"]),
                ("Language adaptation: final target-language MLM eval", stage["language_adapt"])]
    if not stage["oracle"]:
        sections = [x for x in sections if not x[0].startswith("Oracle")]
    if not relearning:
        sections = [("Task scores after source-language fine-tuning (task_adapt; other languages zero-shot)", stage["task_adapt"])]
    if stage["analyze"]:
        sections.append(("Cross-lingual analysis of the pretrained models (analyze; see analyze/*/report.md)", stage["analyze"]))
    if stage["pretrain"]:
        sections.append(("Pretraining", stage["pretrain"]))
    for title, rows in sections:
        lines += [f"## {title}", ""] + (_table(rows) if rows else ["_Nothing recorded._", ""])
    if embedding_rows:
        lines += ["## Class structure of the token embeddings", "", _CLASS_NOTE, ""]
        for s, label in (("pretrain", "pretrained (source language)"), ("oracle", "oracle (gold, through the dictionary)"),
                         ("language_adapt", "relearned (language adaptation)")):
            if rows := [r for r in embedding_rows if r.get("stage") == s]:
                lines += [f"**{label}**", ""] + _table(rows)
    if [p for p in written if not (p == "headline.png" and top)]:
        lines += ["## Figures", ""]
        for png in written:
            if png == "headline.png" and top:
                continue
            alt, caption = _CAPTIONS[png]
            lines += [f"![{alt}]({png})", "", caption, ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
