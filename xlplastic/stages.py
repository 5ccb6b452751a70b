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
Before anything is written, every stage config of the whole sweep is built and checked (check_pipeline,
with the same functions that build them for the run), so a bad stage partial stops the experiment at once.
Folders are named `<model>-s<seed>` and `<target>-<budget>`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from xlplastic.assemble import run_tokenizer_path
from xlplastic.config import Config, dump_config, validate_partials
from xlplastic.errors import UserError
from xlplastic.forgetting import reset_steps
from xlplastic.hf_config import hf_dir
from xlplastic.hf_config import read_config as read_hf_config
from xlplastic.paths import as_path, write_text_atomic
from xlplastic.record import check_rerun
from xlplastic.run import RunResult
from xlplastic.runtime import barrier, is_main, log, write_json

_DRAW_STRIDE = 1000  # seed of new-embedding draw k of pretraining seed s: s + 1000 k
STAGES = ("pretrain", "analyze", "task_adapt", "oracle", "language_adapt", "evaluate")


def materialize_lab(cfg: Config, run_dir: Path) -> Config:
    """Writes the synthetic lab (if configured) into run_dir/lab; relative data paths then resolve there."""
    if cfg.lab is None:
        return cfg
    from xlplastic.data.lab import write_lab

    if is_main():
        write_lab(cfg.lab, run_dir / "lab")
    barrier("lab")
    return _with_lab_dir(cfg, run_dir)


def _with_lab_dir(cfg: Config, run_dir: Path) -> Config:
    """The config as materialize_lab leaves it (data.data_dir, if null, pointing at run_dir/lab), writing nothing."""
    if cfg.lab is None or cfg.data.data_dir is not None:
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": str(run_dir / "lab")})})


def _stage_config(base: dict, *partials: dict[str, Any] | tuple[str, dict[str, Any]], source: str) -> Config:
    """`base` with the partials merged on (a (label, partial) pair is named in errors by its label)."""
    return validate_partials(base, *partials, source=source)


def _with_tests(base: dict, tests: dict[str, str]) -> dict:
    """The experiment config with task.test replaced (a merge would keep the other languages)."""
    return {**base, "task": {**base["task"], "test": dict(tests)}}


def _done(d: Path) -> dict | None:
    f = d / "results.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None


def _target_tokenizer_path(cfg: Config, target, run_dir: Path) -> Path:
    """Where the target language's tokenizer is (or will be, once _target_tokenizer has trained it)."""
    tcfg = target.tokenizer or cfg.data.tokenizer
    return as_path(tcfg.path) if tcfg.path else run_dir / "tokenizers" / target.language / "tokenizer.json"


def _target_tokenizer(cfg: Config, target, run_dir: Path) -> Path:
    """One tokenizer per target language, trained on its whole corpus (the budget caps only the MLM data)."""
    from xlplastic.data.sources import iter_texts
    from xlplastic.data.tokenizers import train_tokenizer

    tcfg = target.tokenizer or cfg.data.tokenizer
    out = _target_tokenizer_path(cfg, target, run_dir)
    if tcfg.path:
        return out
    if is_main() and not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        corpus = target.corpus.model_copy(update={"max_tokens": None})
        tok = train_tokenizer(iter_texts(corpus, cfg.data.data_dir), tcfg)
        write_text_atomic(out, tok.to_str(pretty=True))  # what tok.save writes; also into a bucket
    barrier(f"tokenizer-{target.language}")
    return out


_OFF = {"forgetting": {"every": 0}}
_MLM = {"task": None}  # MLM stages: their config.yaml reruns as MLM training with `xlplastic run`


class _Sweep:
    """Every stage's folder and config, as pure functions of the experiment config (nothing is read or
    written): run_pipeline builds each stage's config here just before running it, and check_pipeline
    builds all of them up front. Partials the user wrote are merged as (label, partial), so an error in
    one names its key as written (`pipeline.language_adapt.train.stpes`)."""

    def __init__(self, cfg: Config, run_dir: Path, task_trainable: list[str]):
        self.cfg, self.pcfg, self.run_dir, self.task_trainable = cfg, cfg.pipeline, run_dir, list(task_trainable)
        self.base = cfg.model_dump(mode="json")
        for k in ("pipeline", "lab"):
            self.base.pop(k)
        targets = {t.language for t in self.pcfg.targets}
        self.source_tests = {l: p for l, p in cfg.task.test.items() if l not in targets}
        missing = sorted(targets - set(cfg.task.test))
        if missing:
            raise UserError(f"task.test has no test set for target language(s) {', '.join(missing)}; expected one per target")
        self.dictionaries = {t.language: list(t.dictionary) for t in self.pcfg.targets}
        if "oracle" in self.pcfg.embeddings:
            from xlplastic.data.lab import gold_dictionaries

            for t in self.pcfg.targets:
                if not self.dictionaries[t.language] and cfg.lab is not None:
                    self.dictionaries[t.language] = gold_dictionaries(cfg.lab, t.language)
                if not self.dictionaries[t.language]:
                    raise UserError(f"pipeline.embeddings has `oracle` but target {t.language} has no dictionary; "
                                    "expected pipeline.targets[].dictionary (MUSE files) or a lab language as the target")

    # folders
    @staticmethod
    def tag(m: str, seed: int) -> str:
        return f"{m}-s{seed}"

    def sub(self, target, budget: int, draw: int) -> str:
        return f"{target.language}-{budget}" + (f"-d{draw}" if self.pcfg.draws > 1 else "")

    def pretrain_dir(self, m: str, seed: int) -> Path:
        """The pretrained model: this sweep's pretraining run, or `pipeline.pretrained[m]` (a run, or `hf:DIR`)."""
        p = self.pcfg.pretrained
        if m not in p:
            return self.run_dir / "pretrain" / self.tag(m, seed)
        src = p[m].replace("{seed}", str(seed))  # one run per seed, e.g. another sweep's pretrain/<m>-s{seed}
        if (d := hf_dir(src)) is not None:
            return Path(f"hf:{d.resolve()}")
        return as_path(src, resolve=True)

    def hf_base(self, m: str) -> Path | None:
        """The HF model a variant starts from: `pipeline.pretrained[m]: hf:DIR` or its `init.from_hf`."""
        src = self.pcfg.pretrained.get(m)
        if src is not None:
            return hf_dir(src.replace("{seed}", str(self.pcfg.seeds[0])))
        return hf_dir(f"hf:{d}") if (d := (self.pcfg.models[m].get("init") or {}).get("from_hf")) else None

    def task_dir(self, m: str, seed: int) -> Path:
        return self.run_dir / "task_adapt" / self.tag(m, seed)

    def oracle_dir(self, m: str, seed: int, target) -> Path:
        return self.run_dir / "oracle" / self.tag(m, seed) / target.language

    def adapt_dir(self, m: str, seed: int, target, budget: int, draw: int) -> Path:
        return self.run_dir / "language_adapt" / self.tag(m, seed) / self.sub(target, budget, draw)

    def evaluate_dir(self, m: str, seed: int, target, budget: int, draw: int) -> Path:
        return self.run_dir / "evaluate" / self.tag(m, seed) / self.sub(target, budget, draw)

    def tokenizer(self, target) -> str:
        return str(_target_tokenizer_path(self.cfg, target, self.run_dir))

    # stage configs
    def _parts(self, m: str, seed: int):
        """A model variant is a way of PRETRAINING: its whole partial config applies there; later stages take
        only its architecture (`model:`), so every variant is adapted and evaluated identically."""
        m_pre = self.pcfg.models[m]
        m_over = (f"pipeline.models.{m}", {k: v for k, v in m_pre.items() if k == "model"})
        if (d := self.hf_base(m)) is not None:  # an HF model's architecture, in every stage after pretraining
            m_over = (m_over[0], {"model": {**m_over[1].get("model", {}), **read_hf_config(d).model_fields(vocab=False)}})
        return (f"pipeline.models.{m}", m_pre), m_over, {"name": m, "train": {"seed": seed}}

    def pretrain(self, m: str, seed: int) -> Config:
        m_pre, _, common = self._parts(m, seed)
        return _stage_config(self.base, ("pipeline.pretrain", self.pcfg.pretrain), m_pre, common, _MLM,
                             source=f"pipeline pretrain {self.tag(m, seed)}")

    def task_adapt(self, m: str, seed: int) -> Config:
        _, m_over, common = self._parts(m, seed)
        p_dir = self.pretrain_dir(m, seed)
        task_over = {"init": {"from_run": str(p_dir)}, "data": {"tokenizer": {"path": str(run_tokenizer_path(p_dir))}},
                     "train": {"trainable": self.task_trainable}}
        if (d := self.hf_base(m)) is not None:  # the HF model's tokenizer: its embedding rows (maybe padded)
            task_over["model"] = {"vocab_size": read_hf_config(d).vocab_size}
        return _stage_config(_with_tests(self.base, self.source_tests), m_over, _OFF, task_over,
                             ("pipeline.task_adapt", self.pcfg.task_adapt), common,
                             source=f"pipeline task_adapt {self.tag(m, seed)}")

    def oracle(self, m: str, seed: int, target) -> Config:
        _, m_over, common = self._parts(m, seed)
        oracle_over = {"task": {"dev": None}, "train": {"steps": 0}, "data": {"tokenizer": {"path": self.tokenizer(target)}},
                       "init": {"from_run": str(self.task_dir(m, seed)),
                                "map_embeddings": {"dictionaries": self.dictionaries[target.language]}}}
        return _stage_config(_with_tests(self.base, self._test(target)), m_over, _OFF,
                             ("pipeline.task_adapt", self.pcfg.task_adapt), oracle_over, common,
                             source=f"pipeline oracle {self.tag(m, seed)}/{target.language}")

    def language_adapt(self, m: str, seed: int, target, budget: int, draw: int) -> Config:
        _, m_over, common = self._parts(m, seed)
        corpus = target.corpus.model_dump(mode="json") | {"max_tokens": budget}
        # draw k > 0 re-draws the embeddings and orders the adaptation data with its own seed
        lang_over = {"data": {"corpora": [corpus], "tokenizer": {"path": self.tokenizer(target)}},
                     "init": {"from_run": str(self.pretrain_dir(m, seed)), "reinit": ["token_embedding"]},
                     "train": {"trainable": ["token_embedding"], "seed": seed + _DRAW_STRIDE * draw}}
        return _stage_config(self.base, m_over, _OFF, common, lang_over, ("pipeline.language_adapt", self.pcfg.language_adapt),
                             _MLM, source=f"pipeline language_adapt {self.tag(m, seed)}/{self.sub(target, budget, draw)}")

    def evaluate(self, m: str, seed: int, target, budget: int, draw: int) -> Config:
        _, m_over, common = self._parts(m, seed)
        eval_over = {"task": {"dev": None}, "train": {"steps": 0}, "data": {"tokenizer": {"path": self.tokenizer(target)}},
                     "init": {"from_run": str(self.task_dir(m, seed)),
                              "groups_from": {"token_embedding": str(self.adapt_dir(m, seed, target, budget, draw))}}}
        return _stage_config(_with_tests(self.base, self._test(target)), m_over, _OFF,
                             ("pipeline.task_adapt", self.pcfg.task_adapt), eval_over, common,
                             source=f"pipeline evaluate {self.tag(m, seed)}/{self.sub(target, budget, draw)}")

    def _test(self, target) -> dict[str, str]:
        return {target.language: self.cfg.task.test[target.language]}

    def every_stage(self):
        """(stage, build its config) for every stage of the sweep, in run order (analysis stages aside)."""
        p = self.pcfg
        for seed in p.seeds:
            for m in p.models:
                yield "pretrain", lambda m=m, seed=seed: self.pretrain(m, seed)
                yield "task_adapt", lambda m=m, seed=seed: self.task_adapt(m, seed)
                for t in p.targets:
                    if "oracle" in p.embeddings:
                        yield "oracle", lambda m=m, seed=seed, t=t: self.oracle(m, seed, t)
                    if "adapted" not in p.embeddings:
                        continue
                    for b in p.budgets:
                        for k in range(p.draws):
                            yield "language_adapt", lambda m=m, seed=seed, t=t, b=b, k=k: self.language_adapt(m, seed, t, b, k)
                            yield "evaluate", lambda m=m, seed=seed, t=t, b=b, k=k: self.evaluate(m, seed, t, b, k)


def check_pipeline(cfg: Config, run_dir: str | Path) -> int:
    """Builds and validates the config of EVERY stage of the sweep (models x seeds x targets x budgets x
    draws) and the lab settings, reading and writing nothing: a mistake in any stage's partial config
    stops the experiment before its first stage, with one line naming the key. Returns the stage count."""
    from xlplastic.finetune import TASK_TRAINABLE

    if cfg.pipeline is None:
        raise UserError("this config has no `pipeline:` section; expected the relearning pipeline's stages")
    if cfg.task is None:
        raise UserError("the pipeline needs a `task:` section (the source-language task to adapt and evaluate)")
    if cfg.lab is not None:
        from xlplastic.data.lab import check_lab_config

        check_lab_config(cfg.lab)
    run_dir = as_path(run_dir, resolve=True)
    sweep = _Sweep(_with_lab_dir(cfg, run_dir), run_dir, TASK_TRAINABLE)
    n = 0
    for _, build in sweep.every_stage():
        build()
        n += 1
    return n


def run_pipeline(cfg: Config, run_dir: str | Path, *, only: list[str] | None = None) -> RunResult:
    """Runs every stage of the sweep in order (skipping complete ones); returns the merged results."""
    from xlplastic.finetune import TASK_TRAINABLE, run_task
    from xlplastic.run import run

    pcfg = cfg.pipeline
    run_dir = as_path(run_dir, resolve=True)
    check_pipeline(cfg, run_dir)  # every stage's config, before anything is written or run
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = materialize_lab(cfg, run_dir)
    if is_main():
        (run_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    sweep = _Sweep(cfg, run_dir, TASK_TRAINABLE)
    rows: list[dict] = []
    curves: dict[str, dict] = {"pretrain": {}, "language_adapt": {}, "reset_steps": {}}

    def stage(name: str, d: Path, make_cfg, go, tags: dict) -> dict | None:
        if only and name not in only:
            return _done(d)
        found = _done(d)
        if found is not None:
            check_rerun(d, dump_config(make_cfg()))  # a finished stage is a record: a changed config is refused
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

    word_files = _word_classes(cfg)
    gold: dict[str, dict[str, str]] = {}  # language -> word -> class, each language's files parsed once
    class_rows: list[dict] = []  # beside `summary`, not in it: its rows are task scores and MLM losses

    source = _headline(cfg)["source"]
    refs: dict[str, tuple] = {}  # pretrained run -> its source-language (embeddings, ids, classes)

    def gold_classes(language: str) -> dict[str, str] | None:
        if not word_files.get(language):
            return None
        if language not in gold:
            from xlplastic.analysis.class_structure import word_classes
            from xlplastic.data.sources import resolve_path

            gold[language] = word_classes([resolve_path(f, cfg.data.data_dir) for f in word_files[language]])
        return gold[language]

    def reference(p_dir: Path):
        """The source-language rows of the pretrained (frozen, so also the task-adapted) body's embeddings."""
        if str(p_dir) not in refs:
            refs[str(p_dir)] = _tagged_embeddings(p_dir, gold_classes(source))
        return refs[str(p_dir)]

    def classes(d: Path, language: str, tags: dict, keep: bool = True, p_dir: Path | None = None):
        """How class-structured run d's token embeddings are in `language` (when its word classes are known);
        with p_dir, also how close they sit to the source-language classes of that pretrained body.
        keep=False for a run this sweep reuses but does not own (`pipeline.pretrained`): nothing is written there."""
        if gold_classes(language) is None or (_done(d) is None and not str(d).startswith("hf:")):
            return  # no gold classes, or not run (`--only` another stage)
        ref = (lambda: reference(p_dir)) if p_dir is not None and gold_classes(source) is not None else None
        rows = _class_rows(d, language, gold_classes(language), keep=keep, reference=ref)
        class_rows.extend({**r, **tags} for r in rows)

    def adapt(m, seed, draw, target, budget):
        """Language adaptation (new embeddings, draw `draw`) and the zero-shot evaluation of its assembly."""
        l_dir = sweep.adapt_dir(m, seed, target, budget, draw)
        tags = {"model": m, "seed": seed, "budget": budget} | ({"draw": draw} if pcfg.draws > 1 else {})
        stage("language_adapt", l_dir, lambda: sweep.language_adapt(m, seed, target, budget, draw),
              lambda c, d: run(c, d), tags)
        classes(l_dir, target.language, {**tags, "stage": "language_adapt"}, p_dir=sweep.pretrain_dir(m, seed))
        key = f"{m}/s{seed}" + (f"d{draw}" if pcfg.draws > 1 else "")
        curves["language_adapt"][f"{key}/{target.language}/{budget}"] = _metric_rows(l_dir)
        stage("evaluate", sweep.evaluate_dir(m, seed, target, budget, draw),
              lambda: sweep.evaluate(m, seed, target, budget, draw),
              lambda c, d: run_task(c, d, stage="evaluate"), tags)

    try:
        for seed in pcfg.seeds:
            for m in pcfg.models:
                tag = sweep.tag(m, seed)
                p_dir = sweep.pretrain_dir(m, seed)
                pre_cfg = sweep.pretrain(m, seed)
                if m not in pcfg.pretrained:
                    stage("pretrain", p_dir, lambda: pre_cfg, lambda c, d: run(c, d), {"model": m, "seed": seed})
                curves["pretrain"][f"{m}/s{seed}"] = _metric_rows(p_dir)
                for lang in dict.fromkeys(c.language for c in pre_cfg.data.corpora):
                    classes(p_dir, lang, {"model": m, "seed": seed, "stage": "pretrain"}, keep=m not in pcfg.pretrained)
                if cfg.analysis is not None:  # cross-lingual structure of the pretrained model
                    stage("analyze", run_dir / "analyze" / tag, lambda: None,
                          lambda c, d, p_dir=p_dir, m=m: _analyze_stage(p_dir, m, cfg, d), {"model": m, "seed": seed})
                curves["reset_steps"][f"{m}/s{seed}"] = reset_steps(pre_cfg.forgetting, pre_cfg.train.steps)
                stage("task_adapt", sweep.task_dir(m, seed), lambda: sweep.task_adapt(m, seed),
                      lambda c, d: run_task(c, d, stage="task_adapt"), {"model": m, "seed": seed})
                for target in pcfg.targets:
                    _target_tokenizer(cfg, target, run_dir)  # trained once, at the path the stages name
                    if "oracle" in pcfg.embeddings:
                        stage("oracle", sweep.oracle_dir(m, seed, target), lambda: sweep.oracle(m, seed, target),
                              lambda c, d: run_task(c, d, stage="oracle"), {"model": m, "seed": seed})
                        classes(sweep.oracle_dir(m, seed, target), target.language, {"model": m, "seed": seed, "stage": "oracle"},
                                p_dir=p_dir)
                    if "adapted" not in pcfg.embeddings:
                        continue
                    for budget in pcfg.budgets:
                        for draw in range(pcfg.draws):
                            adapt(m, seed, draw, target, budget)
    except _Interrupted as e:
        log("pipeline interrupted; rerun the same command to resume where it stopped")
        return RunResult(run_dir, e.result.final_step, e.result.results, interrupted=True)

    from xlplastic.pipeline_report import differences, write_pipeline_report

    results = {"name": cfg.name, "summary": rows, "stages": list(STAGES)}
    for key, extra in (("differences", differences(rows)), ("class_structure", class_rows)):
        if extra:  # forgetting - standard paired by seed; embedding class scores
            results[key] = extra
    if is_main():
        write_json(run_dir / "results.json", results)
        report = write_pipeline_report(run_dir, cfg.name, rows, curves, notes=_notes(cfg), headline=_headline(cfg),
                                       class_structure=class_rows)
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


def _word_classes(cfg: Config) -> dict[str, list[str]]:
    """language -> CoNLL-U files with its words' classes: `pipeline.word_classes`, else each lab language's own."""
    if cfg.pipeline.word_classes:
        return dict(cfg.pipeline.word_classes)
    if cfg.lab is None:
        return {}
    from xlplastic.data.lab import gold_tags

    return {l.name: gold_tags(cfg.lab, l.name) for l in cfg.lab.languages}


def _tagged_embeddings(d: Path, classes: dict[str, str]) -> tuple:
    """(token embeddings, ids, classes) of run d's rows for the tagged words it has a token for."""
    from xlplastic.analysis.class_structure import tagged_rows
    from xlplastic.analysis.reps import load_model
    from flax.traverse_util import flatten_dict

    model = load_model(d)
    ids, labels = tagged_rows(model.tokenizer, classes)
    return flatten_dict(model.params, sep="/")["token_embed"], ids, labels


def _class_rows(d: Path, language: str, classes: dict[str, str], keep: bool, reference=None) -> list[dict]:
    """class_r2 / class_1nn (and source_class_1nn against `reference()`, called only on a cache miss) rows of
    run `d`'s token embeddings over `language`'s tagged words (`classes`: word -> class); computed once and
    kept in d/class_structure.json when `keep` (the run is this sweep's own)."""
    from xlplastic.analysis.class_structure import MIN_WORDS, class_structure

    cache = d / "class_structure.json"
    found = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
    if language not in found or (reference is not None and found[language] and "source_class_1nn" not in found[language]):
        emb, ids, labels = _tagged_embeddings(d, classes)
        ref = reference() if reference is not None else None
        if ref is not None and len(ref[1]) < MIN_WORDS:
            ref = None  # too few tagged source words to score against: the other two metrics only
        found[language] = class_structure(emb, ids, labels, reference=ref) if len(ids) >= MIN_WORDS else {}
        if is_main() and keep:
            write_text_atomic(cache, json.dumps(found, indent=2) + "\n")
    return [{"task": "embeddings", "metric": k, "language": language, "value": v} for k, v in found[language].items()]


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
