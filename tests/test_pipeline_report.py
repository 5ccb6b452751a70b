"""The relearning-pipeline report: files exist, PNGs are real, tables hold the right numbers."""

import math
import re

from xlplastic.pipeline_report import differences, paired_difference, write_pipeline_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODELS, SEEDS, BUDGETS, LANG = ("standard", "forgetting"), (0, 1), (20_000, 200_000), "syn_perm"
# zero-shot accuracy[model][budget] = per-seed values
ACC = {"standard": {20_000: [0.50, 0.54], 200_000: [0.60, 0.62]},
       "forgetting": {20_000: [0.60, 0.62], 200_000: [0.63, 0.65]}}


def _summary():
    rows = []
    for m in MODELS:
        for s in SEEDS:
            rows.append(dict(model=m, stage="pretrain", task="mlm", language="en", metric="loss", value=3.0, seed=s))
            rows.append(dict(model=m, stage="task_adapt", task="xnli", language="en", metric="accuracy", value=0.8, seed=s))
            for b in BUDGETS:
                rows.append(dict(model=m, stage="language_adapt", task="mlm", language=LANG, metric="loss",
                                 value=4.0 - 0.1 * s, seed=s, budget=b))
                rows.append(dict(model=m, stage="evaluate", task="xnli", language=LANG, metric="accuracy",
                                 value=ACC[m][b][s], seed=s, budget=b))
    # a failed seed: NaN must be dropped from the mean, not poison it
    rows.append(dict(model="forgetting", stage="evaluate", task="xnli", language=LANG, metric="accuracy",
                     value=float("nan"), seed=2, budget=200_000))
    return rows


def _pretrain_curves():
    curves, resets = {}, {}
    for m in MODELS:
        for s in SEEDS:
            reset = list(range(50, 201, 50)) if m == "forgetting" else []
            curves[f"{m}/s{s}"] = [
                {"step": t, "loss": 7 * math.exp(-t / 40) + 2 + (3.0 if t in reset or t - 1 in reset else 0.0),
                 "reset": float(t in reset)} for t in range(1, 201)]
            if reset:
                resets[f"{m}/s{s}"] = reset
    return curves, resets


def _embedded(report):
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())


def test_full_pipeline_report(tmp_path):
    pre, resets = _pretrain_curves()
    adapt = {f"{m}/s{s}/{LANG}/{b}": [{"step": t, "loss": 6 - t / 50 - (0.5 if m == "forgetting" else 0)} for t in range(1, 101)]
             for m in MODELS for s in SEEDS for b in BUDGETS}
    curves = {"pretrain": pre, "language_adapt": adapt, "reset_steps": resets}
    report = write_pipeline_report(tmp_path, "relearn-test", _summary(), curves, notes=["synthetic data"])

    assert report == tmp_path / "report.md"
    pngs = {"pretrain_loss.png", "adaptation_loss.png", "zero_shot.png", "budget_curve.png"}
    assert {p.name for p in tmp_path.glob("*.png")} == pngs
    for name in pngs:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000, name
    assert sorted(_embedded(report)) == sorted(pngs)  # each once, relative path

    text = report.read_text()
    assert text.startswith("# relearn-test") and "- synthetic data" in text
    # by hand: standard @20k = (0.50 + 0.54) / 2 = 0.52, sample std = 0.02·√2; forgetting = 0.61; paired by
    # seed the differences are 0.10 and 0.08: +0.09 ± 0.01·√2, forgetting ahead on both seeds
    std = math.sqrt(2 * 0.02**2)
    row = next(line for line in text.splitlines() if line.startswith("| xnli | accuracy | syn_perm | 20,000 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == f"0.5200 ± {std:.4f} (n=2)"
    assert cells[5].startswith("0.6100 ± ") and cells[6] == f"+0.0900 ± {math.sqrt(2) * 0.01:.4f} (2/2 seeds ahead)"
    row = next(line for line in text.splitlines() if line.startswith("| xnli | accuracy | syn_perm | 200,000 |"))
    # the NaN seed is dropped, and seed 2 has no standard run to pair with
    assert "0.6400 ± 0.0141 (n=2)" in row and "+0.0300 ± 0.0000 (2/2 seeds ahead)" in row
    assert "| xnli | accuracy | en | – | 0.8000 ± 0.0000 (n=2)" in text  # source-language task table
    assert f"| mlm | loss | {LANG} | 200,000 | 3.9500 ±" in text  # language-adaptation table


def test_partial_reports(tmp_path):
    pre, resets = _pretrain_curves()
    # same folder as a richer report would use: stale figures must not survive into the new report
    (tmp_path / "zero_shot.png").write_bytes(PNG_SIGNATURE)
    report = write_pipeline_report(tmp_path, "pretrain-only", [], {"pretrain": pre, "reset_steps": resets})
    assert {p.name for p in tmp_path.glob("*.png")} == {"pretrain_loss.png"}
    assert _embedded(report) == ["pretrain_loss.png"]
    assert (tmp_path / "pretrain_loss.png").read_bytes().startswith(PNG_SIGNATURE)

    # one model, one seed, one budget, no curves at all: tables without a difference column, one figure
    rows = [dict(model="standard", stage="evaluate", task="pos", language="de", metric="f1", value=0.7, seed=0, budget=1000)]
    report = write_pipeline_report(tmp_path / "single", "single", rows, {})
    assert _embedded(report) == ["zero_shot.png"]
    text = report.read_text()
    assert "| pos | f1 | de | 1,000 | 0.7000 (n=1) |" in text and "forgetting − standard" not in text


def test_headline_table_and_reading(tmp_path):
    """Source, zero-shot (pooled over seeds and draws) and oracle per model, chance, and the sentence."""
    rows = []
    for m, zs in (("standard", [0.4, 0.5, 0.6]), ("forgetting", [0.8, 0.9, 0.7])):
        rows.append(dict(model=m, stage="task_adapt", task="nli", language="syn", metric="accuracy", value=0.98, seed=0))
        rows.append(dict(model=m, stage="oracle", task="nli", language="syn_perm", metric="accuracy", value=0.98, seed=0))
        for k, v in enumerate(zs):
            rows.append(dict(model=m, stage="evaluate", task="nli", language="syn_perm", metric="accuracy", value=v,
                             seed=0, budget=5000, draw=k))
    headline = {"task": "nli", "metric": "accuracy", "source": "syn", "chance": {"syn": 1 / 3, "syn_perm": 1 / 3},
                "tokenizer": "wordlevel"}
    report = write_pipeline_report(tmp_path, "qs", rows, {}, headline=headline)
    text = report.read_text()
    assert text.index("## Headline: nli accuracy (wordlevel tokenizer)") < text.index("## Zero-shot results")
    assert "| model | source (syn) | zero-shot syn_perm, 5k tokens | oracle syn_perm |" in text
    assert "| standard | 0.9800 (n=1) | 0.5000 ± 0.1000 (n=3) | 0.9800 (n=1) |" in text
    # one seed: its three draws are averaged before the difference, so no seed spread to show
    assert ("| forgetting − standard (paired by seed) | +0.0000 (0/1 seed ahead) | +0.3000 (1/1 seed ahead) "
            "| +0.0000 (0/1 seed ahead) |") in text
    assert "| chance (majority label) | 0.3333 | 0.3333 | 0.3333 |" in text
    reading = next(line for line in text.splitlines() if line.startswith("**Reading:**"))
    # (0.5 - 1/3) / (0.98 - 1/3) = 26%; (0.8 - 1/3) / (0.98 - 1/3) = 72%
    assert "standard 0.500 ± 0.100 (n=3), 26% of the way" in reading and "forgetting 0.800 ± 0.100 (n=3), 72%" in reading
    assert "oracle is within 0.000 of the source score, so the task body carries over intact" in reading
    assert "![headline: source, zero-shot and oracle](headline.png)" in text
    assert (tmp_path / "headline.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "## Oracle assembly" in text


def test_paired_difference_is_over_seeds_not_draws():
    """Draws are averaged within a seed before the difference: the std is the pretraining-seed spread."""
    rows = []
    # standard: seed means 0.40, 0.50, 0.45; forgetting: 0.60, 0.50, 0.65 -> differences +0.20, 0.00, +0.20
    for m, per_seed in (("standard", [[0.35, 0.45], [0.50, 0.50], [0.40, 0.50]]),
                        ("forgetting", [[0.70, 0.50], [0.45, 0.55], [0.65, 0.65]])):
        for seed, draws in enumerate(per_seed):
            rows += [dict(model=m, stage="evaluate", task="nli", language="t", metric="accuracy", value=v,
                          seed=seed, budget=1000, draw=k) for k, v in enumerate(draws)]
    rows.append(dict(model="forgetting", stage="evaluate", task="nli", language="t", metric="accuracy", value=0.99,
                     seed=9, budget=1000, draw=0))  # no standard run of seed 9: not paired
    d = paired_difference(rows)
    assert d["n"] == 3 and d["ahead"] == 2
    assert math.isclose(d["mean"], 0.4 / 3) and math.isclose(d["std"], math.sqrt(((0.2 - 0.4 / 3) ** 2 * 2 + (0.4 / 3) ** 2) / 2))
    (row,) = differences(rows)
    assert row == {"models": "forgetting - standard", "stage": "evaluate", "task": "nli", "metric": "accuracy",
                   "language": "t", "budget": 1000, "mean": d["mean"], "seed_std": d["std"], "seeds": 3,
                   "seeds_ahead": 2}
    assert differences([r for r in rows if r["model"] == "standard"]) == []  # one model: nothing to pair
