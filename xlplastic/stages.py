"""The relearning pipeline (Chen et al., 2023) as one experiment: stages over a sweep.

For every seed s and model m (e.g. standard, forgetting):
  pretrain/m-s            masked LM on the source language (forgetting resets if m asks for them)
  task_adapt/m-s          source-language task; token embeddings frozen, body + task head train
  and for every target language t and adaptation budget b:
  language_adapt/m-s/t-b  new tokenizer, token embeddings re-drawn; ONLY they train, MLM on b tokens of t
  evaluate/m-s/t-b        assembly (task-adapted body + adapted embeddings), zero-shot on t's test set
Each stage is a normal run in its own folder: complete (results.json present) means skipped, and an
interrupted one resumes from its checkpoints when the experiment is run again. Every stage config is
the experiment config with the model's and the stage's partial configs merged on top, written to the
stage folder, so any stage can be rerun alone with `xlplastic run <stage>/config.yaml --run-dir <stage>`.
Folders are named `<model>-s<seed>` and `<target>-<budget>`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from xlplastic.assemble import run_tokenizer_path
from xlplastic.config import Config, _deep_merge, dump_config, validate
from xlplastic.errors import UserError
from xlplastic.forgetting import reset_steps
from xlplastic.run import RunResult, _write_json, barrier, is_main, log

_DRAW_STRIDE = 1000  # seed of new-embedding draw k of pretraining seed s: s + 1000 k
STAGES = ("pretrain", "analyze", "task_adapt", "oracle", "language_adapt", "evaluate")


def materialize_lab(cfg: Config, run_dir: Path) -> Config:
    """Writes the synthetic lab (if configured) into run_dir/lab; relative data paths then resolve there."""
    if cfg.lab is None:
        return cfg
    from xlplastic.data.lab import write_lab

    lab_dir = run_dir / "lab"
    if is_main():
        write_lab(cfg.lab, lab_dir)
    barrier("lab")
    if cfg.data.data_dir is None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": str(lab_dir)})})
    return cfg


def _stage_config(base: dict, *partials: dict[str, Any], source: str) -> Config:
    raw = base
    for p in partials:
        raw = _deep_merge(raw, p)
    return validate(raw, source=source)


def _with_tests(base: dict, tests: dict[str, str]) -> dict:
    """The experiment config with task.test replaced (a merge would keep the other languages)."""
    return {**base, "task": {**base["task"], "test": dict(tests)}}


def _done(d: Path) -> dict | None:
    f = d / "results.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None


def _target_tokenizer(cfg: Config, target, run_dir: Path) -> Path:
    """One tokenizer per target language, trained on its whole corpus (the budget caps only the MLM data)."""
    from xlplastic.data.sources import iter_texts
    from xlplastic.data.tokenizers import train_tokenizer

    tcfg = target.tokenizer or cfg.data.tokenizer
    if tcfg.path:
        return Path(tcfg.path)
    out = run_dir / "tokenizers" / target.language / "tokenizer.json"
    if is_main() and not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        corpus = target.corpus.model_copy(update={"max_tokens": None})
        tok = train_tokenizer(iter_texts(corpus, cfg.data.data_dir), tcfg)
        tmp = out.with_suffix(".tmp")
        tok.save(str(tmp))
        tmp.replace(out)
    barrier(f"tokenizer-{target.language}")
    return out


def run_pipeline(cfg: Config, run_dir: str | Path, *, only: list[str] | None = None) -> RunResult:
    """Runs every stage of the sweep in order (skipping complete ones); returns the merged results."""
    from xlplastic.finetune import TASK_TRAINABLE, run_task
    from xlplastic.run import run

    pcfg = cfg.pipeline
    if pcfg is None:
        raise UserError("this config has no `pipeline:` section; expected the relearning pipeline's stages")
    if cfg.task is None:
        raise UserError("the pipeline needs a `task:` section (the source-language task to adapt and evaluate)")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = materialize_lab(cfg, run_dir)
    if is_main():
        (run_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    base = cfg.model_dump(mode="json")
    for k in ("pipeline", "lab"):
        base.pop(k)
    targets = {t.language for t in pcfg.targets}
    source_tests = {l: p for l, p in cfg.task.test.items() if l not in targets}
    missing = sorted(targets - set(cfg.task.test))
    if missing:
        raise UserError(f"task.test has no test set for target language(s) {', '.join(missing)}; expected one per target")
    dictionaries = {t.language: list(t.dictionary) for t in pcfg.targets}
    if "oracle" in pcfg.embeddings:
        from xlplastic.data.lab import gold_dictionaries

        for t in pcfg.targets:
            if not dictionaries[t.language] and cfg.lab is not None:
                dictionaries[t.language] = gold_dictionaries(cfg.lab, t.language)
            if not dictionaries[t.language]:
                raise UserError(f"pipeline.embeddings has `oracle` but target {t.language} has no dictionary; expected "
                                "pipeline.targets[].dictionary (MUSE files) or a lab language as the target")
    off = {"forgetting": {"every": 0}}
    mlm = {"task": None}  # MLM stages: their config.yaml reruns as MLM training with `xlplastic run`
    rows: list[dict] = []
    curves: dict[str, dict] = {"pretrain": {}, "language_adapt": {}, "reset_steps": {}}

    def stage(name: str, d: Path, make_cfg, go, tags: dict) -> dict | None:
        if only and name not in only:
            return _done(d)
        found = _done(d)
        if found is not None:
            log(f"[{name}] {d.relative_to(run_dir)}: complete, skipped")
        else:
            c = make_cfg()
            log(f"[{name}] {d.relative_to(run_dir)}")
            result = go(c, d)
            if result.interrupted:
                raise _Interrupted(result)
            found = result.results
        for r in found.get("summary", []):
            rows.append({**r, **tags, "stage": name})
        return found

    def adapt(m, m_over, tag, seed, draw, target, budget, tok, test, p_dir, t_dir, common):
        """Language adaptation (new embeddings, draw `draw`) and the zero-shot evaluation of its assembly."""
        sub = f"{target.language}-{budget}" + (f"-d{draw}" if pcfg.draws > 1 else "")
        l_dir = run_dir / "language_adapt" / tag / sub
        corpus = target.corpus.model_dump(mode="json") | {"max_tokens": budget}
        # draw k > 0 re-draws the embeddings and orders the adaptation data with its own seed
        lang_over = {"data": {"corpora": [corpus], "tokenizer": {"path": tok}},
                     "init": {"from_run": str(p_dir), "reinit": ["token_embedding"]},
                     "train": {"trainable": ["token_embedding"], "seed": seed + _DRAW_STRIDE * draw}}
        tags = {"model": m, "seed": seed, "budget": budget} | ({"draw": draw} if pcfg.draws > 1 else {})
        stage("language_adapt", l_dir,
              lambda: _stage_config(base, m_over, off, common, lang_over, pcfg.language_adapt, mlm,
                                    source=f"language_adapt {tag}/{sub}"),
              lambda c, d: run(c, d), tags)
        key = f"{m}/s{seed}" + (f"d{draw}" if pcfg.draws > 1 else "")
        curves["language_adapt"][f"{key}/{target.language}/{budget}"] = _metric_rows(l_dir)
        e_dir = run_dir / "evaluate" / tag / sub
        eval_over = {"task": {"dev": None}, "train": {"steps": 0},
                     "data": {"tokenizer": {"path": tok}},
                     "init": {"from_run": str(t_dir), "groups_from": {"token_embedding": str(l_dir)}}}
        stage("evaluate", e_dir,
              lambda: _stage_config(_with_tests(base, test), m_over, off, pcfg.task_adapt, eval_over, common,
                                    source=f"evaluate {tag}/{sub}"),
              lambda c, d: run_task(c, d, stage="evaluate"), tags)

    try:
        for seed in pcfg.seeds:
            for m, m_pre in pcfg.models.items():
                # A model variant is a way of PRETRAINING: its whole partial config applies there; later stages
                # take only its architecture (`model:`), so every variant is adapted and evaluated identically.
                m_over = {k: v for k, v in m_pre.items() if k == "model"}
                tag = f"{m}-s{seed}"
                common = {"name": m, "train": {"seed": seed}}
                p_dir = Path(pcfg.pretrained[m]).resolve() if m in pcfg.pretrained else run_dir / "pretrain" / tag
                pre_cfg = _stage_config(base, pcfg.pretrain, m_pre, common, mlm, source=f"pipeline pretrain {tag}")
                if m not in pcfg.pretrained:
                    stage("pretrain", p_dir, lambda: pre_cfg, lambda c, d: run(c, d), {"model": m, "seed": seed})
                curves["pretrain"][f"{m}/s{seed}"] = _metric_rows(p_dir)
                if cfg.analysis is not None:  # cross-lingual structure of the pretrained model
                    stage("analyze", run_dir / "analyze" / tag, lambda: None,
                          lambda c, d, p_dir=p_dir, m=m: _analyze_stage(p_dir, m, cfg, d), {"model": m, "seed": seed})
                curves["reset_steps"][f"{m}/s{seed}"] = reset_steps(pre_cfg.forgetting, pre_cfg.train.steps)
                p_tok = str(run_tokenizer_path(p_dir))
                t_dir = run_dir / "task_adapt" / tag
                task_over = {"init": {"from_run": str(p_dir)},
                             "data": {"tokenizer": {"path": p_tok}}, "train": {"trainable": TASK_TRAINABLE}}
                stage("task_adapt", t_dir,
                      lambda: _stage_config(_with_tests(base, source_tests), m_over, off, task_over, pcfg.task_adapt, common,
                                            source=f"task_adapt {tag}"),
                      lambda c, d: run_task(c, d, stage="task_adapt"), {"model": m, "seed": seed})
                for target in pcfg.targets:
                    tok = str(_target_tokenizer(cfg, target, run_dir))
                    test = {target.language: cfg.task.test[target.language]}
                    if "oracle" in pcfg.embeddings:
                        o_dir = run_dir / "oracle" / tag / target.language
                        oracle_over = {"task": {"dev": None}, "train": {"steps": 0}, "data": {"tokenizer": {"path": tok}},
                                       "init": {"from_run": str(t_dir),
                                                "map_embeddings": {"dictionaries": dictionaries[target.language]}}}
                        stage("oracle", o_dir,
                              lambda: _stage_config(_with_tests(base, test), m_over, off, pcfg.task_adapt, oracle_over,
                                                    common, source=f"oracle {tag}/{target.language}"),
                              lambda c, d: run_task(c, d, stage="oracle"), {"model": m, "seed": seed})
                    if "adapted" not in pcfg.embeddings:
                        continue
                    for budget in pcfg.budgets:
                        for draw in range(pcfg.draws):
                            adapt(m, m_over, tag, seed, draw, target, budget, tok, test, p_dir, t_dir, common)
    except _Interrupted as e:
        log("pipeline interrupted; rerun the same command to resume where it stopped")
        return RunResult(run_dir, e.result.final_step, e.result.results, interrupted=True)

    results = {"name": cfg.name, "summary": rows, "stages": list(STAGES)}
    if is_main():
        _write_json(run_dir / "results.json", results)
        from xlplastic.pipeline_report import write_pipeline_report

        report = write_pipeline_report(run_dir, cfg.name, rows, curves, notes=_notes(cfg), headline=_headline(cfg))
        log(f"done: {len(rows)} result rows in {run_dir / 'results.json'}; report: {report}")
    return RunResult(run_dir, 0, results)


def _analyze_stage(p_dir: Path, name: str, cfg: Config, out: Path) -> RunResult:
    """`xlplastic analyze` of a pretrained model as a stage; its headline figures become summary rows."""
    from xlplastic.analysis import reps
    from xlplastic.analysis.runner import analyze

    res = analyze([reps.load_model(p_dir, name=name)], cfg.analysis, out, cfg.data.data_dir, log=log)
    return RunResult(out, 0, res)


class _Interrupted(Exception):
    def __init__(self, result: RunResult):
        self.result = result


def _metric_rows(d: Path) -> list[dict]:
    f = d / "metrics.jsonl"
    if not f.is_file():
        return []
    rows = [json.loads(l) for l in f.read_text(encoding="utf-8").splitlines() if l.strip()]
    return [r for r in rows if "loss" in r]


def _headline(cfg: Config) -> dict:
    """What the report leads with: the task's headline metric, its source language, chance per test language."""
    from xlplastic.tasks.features import HEADLINE_METRIC
    from xlplastic.finetune import read_split
    from xlplastic.tasks.readers import example_labels

    task = cfg.task
    targets = {t.language for t in cfg.pipeline.targets}
    source = next((l for l in task.test if l not in targets), cfg.data.corpora[0].language if cfg.data.corpora else "")
    chance = {}
    if task.kind in ("classification", "pos"):  # the majority label's share: what a constant prediction scores
        for lang, path in task.test.items():
            try:
                counts = Counter(x for e in read_split(task, path, cfg.data.data_dir, None) for x in example_labels(e))
            except UserError:
                continue  # an HF split or an unreadable file: the table just has no chance row for it
            if counts:
                chance[lang] = max(counts.values()) / sum(counts.values())
    tok = cfg.data.tokenizer
    return {"task": task.name, "metric": HEADLINE_METRIC.get(task.kind, "accuracy"), "source": source, "chance": chance,
            "tokenizer": "loaded" if tok.path else tok.kind}


def _notes(cfg: Config) -> list[str]:
    p = cfg.pipeline
    adapt = (f"; targets: {', '.join(t.language for t in p.targets)}; budgets (tokens): {', '.join(map(str, p.budgets))}"
             if p.targets else "")
    notes = [f"models: {', '.join(p.models)}; seeds: {', '.join(map(str, p.seeds))}{adapt}",
             f"task: {cfg.task.name} ({cfg.task.kind}), fine-tuned on the source language, evaluated zero-shot"]
    for m, over in p.models.items():
        f = over.get("forgetting", {})
        if f.get("every"):
            notes.append(f"`{m}` resets {', '.join(f.get('groups', ['token_embedding']))} every {f['every']} steps")
    return notes
