"""`xlplastic analyze`: cross-lingual structure of one or two checkpoints (Conneau, Wu et al., 2020).

For every pair of sides (a side = a model reading one language; see `AnalysisConfig`):

* cka             layers x layers linear CKA (or debiased) of mean-pooled parallel sentences, accumulated
                  on device batch by batch with the exact streaming statistics (any number of sentences);
* retrieval       sentence retrieval P@1 per layer on the held-out parallel sentences (and Tatoeba-style
                  sets): directly, and after an orthogonal Procrustes map fitted on the first sentences;
* word_translation  MUSE P@1 with NN and CSLS (k = 10): static embedding rows of single-token words, and
                  contextual word types per layer (averaged over their occurrences), each directly and
                  through a Procrustes map fitted on the `train` dictionary; dictionary coverage reported.
                  The candidates are the dictionaries' target words (not MUSE's whole target vocabulary)
                  unless `translation_candidates="vocabulary"` (see `translation_vocabularies`);
* word_alignment  contextual word alignment on the parallel sentences (Pharaoh gold, or dictionary pairs
                  that occur once in both sentences): per layer, the share of source words whose nearest
                  target-sentence word is the gold one, directly and after mapping layer i onto layer i.

Results go to `results.json`, figures (CKA heatmaps, by-layer curves) next to it, and `report.md`.
`TrainingProbe` runs the CKA and retrieval part every `analysis.every` steps inside a training run.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from xlplastic.analysis import align, cka, reps
from xlplastic.data import evalsets
from xlplastic.config import AnalysisConfig, Config
from xlplastic.data.sources import resolve_path
from xlplastic.errors import UserError
from xlplastic.paths import as_path, write_text_atomic
from xlplastic.sharding import replicated


@dataclass(frozen=True)
class Side:
    model: reps.LoadedModel
    language: str

    def label(self, two_models: bool) -> str:
        return f"{self.model.name}:{self.language}" if two_models else self.language


def _path(p: str, data_dir: str | None) -> Path:
    return resolve_path(p, data_dir)


# ----------------------------------------------------------------------------------------------
# Inputs


def read_parallel(acfg: AnalysisConfig, data_dir: str | None) -> dict[str, list[str]]:
    """language -> the first `max_sentences` parallel sentences (from the TSV or line-aligned files)."""
    if acfg.parallel:
        cols = evalsets.read_parallel_tsv(_path(acfg.parallel, data_dir))
        cols.pop("sent_id", None)
        cols.pop("id", None)
    elif acfg.parallel_files:
        langs = list(acfg.parallel_files)
        cols = {langs[0]: None}
        first = _path(acfg.parallel_files[langs[0]], data_dir)
        for l in langs[1:]:
            a, b = evalsets.read_parallel(first, _path(acfg.parallel_files[l], data_dir))
            cols[langs[0]], cols[l] = a, b
        if cols[langs[0]] is None:
            raise UserError("analysis.parallel_files: expected at least two languages' files")
    else:
        return {}
    want = acfg.languages or list(cols)
    missing = [l for l in want if l not in cols]
    if missing:
        raise UserError(f"analysis.parallel has no column for language(s) {', '.join(missing)} "
                        f"(it has {', '.join(cols)}); expected one per analysed language")
    n = min(acfg.max_sentences, len(next(iter(cols.values()))))
    return {l: cols[l][:n] for l in want}


def read_alignment(path: Path, n: int) -> list[list[tuple[int, int]]]:
    """Pharaoh `i-j` pairs per line (the first n lines)."""
    if not path.is_file():
        raise UserError(f"{path}: alignment file not found; expected Pharaoh `i-j` pairs, one line per parallel sentence")
    out = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines()[:n], 1):
        pairs = []
        for tok in line.split():
            m = re.fullmatch(r"(\d+)[-p](\d+)", tok)
            if m is None:
                raise UserError(f"{path}:{k}: `{tok}` is not an alignment pair; expected Pharaoh `i-j` (0-based)")
            pairs.append((int(m.group(1)), int(m.group(2))))
        out.append(pairs)
    if len(out) < n:
        raise UserError(f"{path}: {len(out)} alignment lines for {n} parallel sentences; expected one line per sentence")
    return out


def dictionary_alignment(src: list[str], tgt: list[str], dictionary: list[tuple[str, str]]) -> list[list[tuple[int, int]]]:
    """Word pairs of parallel sentences from a dictionary: a source word whose translation occurs exactly
    once in the target sentence (and which itself occurs once) is aligned to it."""
    trans: dict[str, set[str]] = {}
    for a, b in dictionary:
        trans.setdefault(a, set()).add(b)
    out = []
    for s, t in zip(src, tgt):
        sw, tw = s.split(), t.split()
        pos_t: dict[str, list[int]] = {}
        for j, w in enumerate(tw):
            pos_t.setdefault(w, []).append(j)
        count_s: dict[str, int] = {}
        for w in sw:
            count_s[w] = count_s.get(w, 0) + 1
        pairs = []
        for i, w in enumerate(sw):
            if count_s[w] != 1 or w not in trans:
                continue
            hits = [j for x in trans[w] for j in pos_t.get(x, [])]
            if len(hits) == 1:
                pairs.append((i, hits[0]))
        out.append(pairs)
    return out


# ----------------------------------------------------------------------------------------------
# Pieces


def _layers(model: reps.LoadedModel, acfg: AnalysisConfig) -> list[int]:
    if acfg.layers is None:
        return list(range(model.num_layers))
    return reps.check_layers(model, acfg.layers)


def _vectors(a: Side, b: Side, sents_a, sents_b, acfg: AnalysisConfig, la, lb, with_cka: bool = True):
    """Host sentence vectors of both sides and (with_cka) their streaming CKA, accumulated on device
    batch by batch; returns (CKA matrix or None, Xa [La, N, Da], Xb [Lb, N, Db])."""
    if len(sents_a) != len(sents_b):
        raise UserError(f"parallel sentences: {len(sents_a)} in {a.language} but {len(sents_b)} in {b.language}; expected aligned lists")
    kw = dict(batch_size=acfg.batch_size, seq_len=acfg.seq_len)
    state = cka.cka_init(len(la), a.model.width, len(lb), b.model.width, sharding=replicated(a.model.mesh)) if with_cka else None
    va, vb = [], []
    for (n, xa), (_, xb) in zip(reps.sentence_batches(a.model, sents_a, a.language, layers=la, **kw),
                                reps.sentence_batches(b.model, sents_b, b.language, layers=lb, **kw)):
        if with_cka:
            state = cka.cka_update(state, xa, xb, valid=n)
        va.append(np.asarray(xa)[:, :n])
        vb.append(np.asarray(xb)[:, :n])
    matrix = np.asarray(cka.cka_result(state, debiased=acfg.debiased)) if with_cka else None
    return matrix, np.concatenate(va, 1), np.concatenate(vb, 1)


def _retrieval(Ea: np.ndarray, Eb: np.ndarray, Fa: np.ndarray | None, Fb: np.ndarray | None,
               mesh=None) -> tuple[float, float | None]:
    """(direct P@1, Procrustes P@1) of retrieving Eb[i] for Ea[i], all vectors iteratively normalised;
    the map is fitted on the aligned rows Fa/Fb (when there are some and the widths agree). With a
    mesh, the candidates are sharded over its devices."""
    if len(Ea) == 0:
        return float("nan"), None
    na, nb = align.iterative_normalize(Ea), align.iterative_normalize(Eb)
    direct = align.retrieval_precision(na, nb, mesh=mesh)
    if Fa is None or len(Fa) < 2 or Ea.shape[1] != Eb.shape[1]:
        return direct, None
    W = align.procrustes(align.iterative_normalize(Fa), align.iterative_normalize(Fb))
    return direct, align.retrieval_precision(np.asarray(na) @ np.asarray(W), nb, mesh=mesh)


def _mesh(model: reps.LoadedModel):
    """The mesh retrieval shards its candidates over (None on one device)."""
    return model.mesh if model.mesh.size > 1 else None


TRANSLATION_CANDIDATES = ("dictionary", "vocabulary")


def translation_vocabularies(test: list[tuple[str, str]], train: list[tuple[str, str]] | None,
                             src_text: list[str], tgt_text: list[str], candidates: str = "dictionary"
                             ) -> tuple[list[str], list[str]]:
    """(source words, target words) whose vectors word translation is computed on; every target word
    that gets a vector is a retrieval candidate for every query, and the source words are CSLS's source
    population.

    "dictionary" (the default): the words of the test and train dictionaries only, so a query chooses
    among the dictionaries' target words. This is easier than MUSE, which searches the whole target
    embedding vocabulary (200k words): a word that is in no dictionary can never take the top-1.
    "vocabulary": as MUSE, the dictionaries' words plus every word type of the texts the contextual
    vectors are averaged over (`src_text` / `tgt_text`: the word corpus or parallel sentences, the first
    `max_word_sentences` lines), for static and contextual vectors alike. Words that are out of
    vocabulary stay out either way (static: not one token; contextual: not in the text).
    """
    if candidates not in TRANSLATION_CANDIDATES:
        raise UserError(f"word translation candidates {candidates!r}; expected one of {', '.join(TRANSLATION_CANDIDATES)}")
    pairs = list(test) + list(train or [])
    src, tgt = [s for s, _ in pairs], [t for _, t in pairs]
    if candidates == "vocabulary":
        src += [w for line in src_text for w in line.split()]
        tgt += [w for line in tgt_text for w in line.split()]
    return list(dict.fromkeys(src)), list(dict.fromkeys(tgt))


def _word_translation(a: Side, b: Side, dcfg, data_dir, corpora: dict[str, list[str]], acfg: AnalysisConfig, la, lb,
                      candidates: str = "dictionary") -> dict:
    test = evalsets.read_muse_dictionary(_path(dcfg.test, data_dir))
    train = evalsets.read_muse_dictionary(_path(dcfg.train, data_dir)) if dcfg.train else None
    ca = corpora[a.language][: acfg.max_word_sentences]
    cb = corpora[b.language][: acfg.max_word_sentences]
    src_vocab, tgt_vocab = translation_vocabularies(test, train, ca, cb, candidates)
    reps_out: dict[str, dict] = {}
    mesh = _mesh(b.model)

    def evaluate(sw, sv, tw, tv):
        row: dict[str, Any] = {}
        try:
            direct = align.word_translation(sw, sv, tw, tv, test, k=acfg.csls_k, mesh=mesh)
        except UserError as e:  # no test pair in both vocabularies for this representation
            return {"error": str(e), "coverage": 0.0}
        row.update(coverage=direct["coverage"], pairs_used=direct["pairs_used"], pairs_total=direct["pairs_total"],
                   direct=direct["precision_at_1"])
        if train is not None and sv.shape[1] == tv.shape[1]:
            try:
                fit = align.fit_procrustes_on_dictionary(sw, sv, tw, tv, train)
            except UserError:
                fit = None
            if fit is not None:
                mapped = align.word_translation(sw, align.iterative_normalize(sv), tw, align.iterative_normalize(tv), test,
                                                W=fit["W"], k=acfg.csls_k, mesh=mesh)
                row.update(procrustes=mapped["precision_at_1"], train_coverage=fit["coverage"])
        return row

    sw, sv = reps.static_word_vectors(a.model, a.language, src_vocab)
    tw, tv = reps.static_word_vectors(b.model, b.language, tgt_vocab)
    reps_out["static"] = evaluate(sw, sv, tw, tv)
    kw = dict(batch_size=acfg.batch_size, seq_len=acfg.seq_len)
    swc, sva = reps.word_type_vectors(a.model, ca, a.language, src_vocab, layers=la, **kw)
    twc, tvb = reps.word_type_vectors(b.model, cb, b.language, tgt_vocab, layers=lb, **kw)
    for i in range(min(len(la), len(lb))):
        reps_out[f"layer_{la[i]}"] = evaluate(swc, sva[i], twc, tvb[i])

    def score(r):  # the mapped figure when there is one (the paper's supervised setting), else direct
        p = r.get("procrustes") or r.get("direct") or {}
        return p.get("csls", -1.0)

    # the headline: the best by CSLS among representations covering at least half as many test pairs as
    # the widest one (a few single-token words must not speak for the dictionary)
    widest = max((r.get("coverage") or 0.0) for r in reps_out.values())
    fair = [k for k, r in reps_out.items() if (r.get("coverage") or 0.0) >= 0.5 * widest] or list(reps_out)
    best = max(fair, key=lambda k: score(reps_out[k]))
    top = reps_out[best].get("procrustes") or reps_out[best].get("direct") or {}
    return {"nn": top.get("nn"), "csls": top.get("csls"), "representation": best,
            "mapping": "procrustes" if reps_out[best].get("procrustes") else "none",
            "candidates": candidates,  # "dictionary": the dictionaries' target words; "vocabulary": all words
            "coverage": reps_out[best].get("coverage"),  # of the representation reported at the top
            "coverage_static": reps_out["static"].get("coverage"),
            "coverage_contextual": reps_out.get(f"layer_{la[0]}", {}).get("coverage"),
            "representations": reps_out}


def _word_alignment(a: Side, b: Side, sents_a, sents_b, gold, fit: int, acfg: AnalysisConfig, la, lb) -> dict:
    kw = dict(batch_size=acfg.batch_size, seq_len=acfg.seq_len)
    wa, kept_a = reps.words_in_context(a.model, [s.split() for s in sents_a], a.language, layers=la, **kw)
    wb, kept_b = reps.words_in_context(b.model, [s.split() for s in sents_b], b.language, layers=lb, **kw)
    L = min(len(la), len(lb))
    out: dict[str, list] = {"layers": [la[i] for i in range(L)], "direct": [], "procrustes": []}
    # gold pairs whose words survived truncation
    pairs = [[(i, j) for i, j in g if i < len(kept_a[n]) and j < len(kept_b[n])] for n, g in enumerate(gold)]
    fit_pairs = [(n, i, j) for n in range(min(fit, len(pairs))) for i, j in pairs[n]]
    test = [n for n in range(fit, len(pairs)) if pairs[n]]
    out["pairs_fit"] = len(fit_pairs)
    out["pairs_test"] = sum(len(pairs[n]) for n in test)
    if not test:
        return out | {"note": "no aligned word pairs in the held-out sentences"}
    for l in range(L):
        W = None
        if len(fit_pairs) >= 2 and a.model.width == b.model.width:
            X = np.stack([wa[n][l, i] for n, i, _ in fit_pairs])
            Y = np.stack([wb[n][l, j] for n, _, j in fit_pairs])
            W = np.asarray(align.procrustes(X, Y))
        hits = {"direct": 0, "procrustes": 0}
        for n in test:
            src = wa[n][l] / np.maximum(np.linalg.norm(wa[n][l], axis=-1, keepdims=True), 1e-9)
            tgt = wb[n][l] / np.maximum(np.linalg.norm(wb[n][l], axis=-1, keepdims=True), 1e-9)
            for i, j in pairs[n]:
                hits["direct"] += int(np.argmax(tgt @ src[i]) == j)
                if W is not None:
                    m = wa[n][l, i] @ W
                    hits["procrustes"] += int(np.argmax(tgt @ (m / max(np.linalg.norm(m), 1e-9))) == j)
        total = out["pairs_test"]
        out["direct"].append(hits["direct"] / total)
        out["procrustes"].append(hits["procrustes"] / total if W is not None else None)
    return out


# ----------------------------------------------------------------------------------------------
# The whole analysis


def sides_of(models: list[reps.LoadedModel], languages: list[str]) -> list[tuple[Side, Side]]:
    if not languages:
        raise UserError("analysis: no languages; expected analysis.languages or a parallel file with language columns")
    if len(models) == 1:
        if len(languages) < 2:
            raise UserError(f"analysis of one model needs two languages; got {languages}")
        return [(Side(models[0], languages[0]), Side(models[0], l)) for l in languages[1:]]
    if len(languages) == 1:
        return [(Side(models[0], languages[0]), Side(models[1], languages[0]))]
    return [(Side(models[0], languages[0]), Side(models[1], l)) for l in languages[1:]]


def analyze(models: list[reps.LoadedModel], acfg: AnalysisConfig, out_dir: str | Path, data_dir: str | None = None,
            log=print, translation_candidates: str | None = None) -> dict:
    """The whole analysis into `out_dir`. translation_candidates: what word translation searches,
    "dictionary" (default) or "vocabulary" (see `translation_vocabularies`); None = the analysis
    config's `translation_candidates` where it has that key, else "dictionary"."""
    candidates = translation_candidates or acfg.translation_candidates
    if candidates not in TRANSLATION_CANDIDATES:
        raise UserError(f"word translation candidates {candidates!r}; expected one of {', '.join(TRANSLATION_CANDIDATES)}")
    out_dir = as_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    two = len(models) == 2
    notes: list[str] = []
    if two and models[0].name == models[1].name:
        models[1] = reps.LoadedModel(**{**models[1].__dict__, "name": models[1].name + "_2"})
    if two and models[0].num_layers != models[1].num_layers:
        notes.append(f"{models[0].name} has {models[0].num_layers} layers and {models[1].name} {models[1].num_layers} "
                     f"(embeddings included): CKA compares every pair that exists; by-layer figures use layers "
                     f"0..{min(m.num_layers for m in models) - 1} of both")
    parallel = read_parallel(acfg, data_dir)
    languages = acfg.languages or list(parallel)
    pairs = sides_of(models, languages)
    corpora: dict[str, list[str]] = {}
    for l in languages:
        if l in acfg.word_corpus:
            corpora[l] = [x for x in _path(acfg.word_corpus[l], data_dir).read_text(encoding="utf-8").splitlines() if x.strip()]
        elif l in parallel:
            corpora[l] = parallel[l]
    n_par = len(next(iter(parallel.values()))) if parallel else 0
    fit = int(n_par * acfg.fit_share)
    results: dict[str, Any] = {
        "models": {m.name: {"run_dir": str(m.run_dir), "step": m.step, "layers": m.num_layers, "width": m.width}
                   for m in models},
        "languages": languages, "parallel_sentences": n_par, "fit_sentences": fit,
        "cka_kind": "linear, debiased" if acfg.debiased else "linear",
        "cka": {}, "retrieval": {}, "word_translation": {}, "word_alignment": {}, "notes": notes,
    }
    gold_align = read_alignment(_path(acfg.alignment, data_dir), n_par) if acfg.alignment and parallel else None
    for a, b in pairs:
        key = f"{a.label(two)}-{b.label(two)}"
        la, lb = _layers(a.model, acfg), _layers(b.model, acfg)
        common = min(len(la), len(lb))
        log(f"analyze {key}: layers {la} x {lb}")
        if parallel and a.language in parallel and b.language in parallel:
            sa, sb = parallel[a.language], parallel[b.language]
            matrix, Xa, Xb = _vectors(a, b, sa, sb, acfg, la, lb)
            results["cka"][key] = {"layers_a": la, "layers_b": lb, "matrix": matrix.tolist()}
            r = {"layers": [la[i] for i in range(common)], "direct": [], "procrustes": [], "sentences": n_par - fit}
            for i in range(common):
                d, p = _retrieval(Xa[i][fit:], Xb[i][fit:], Xa[i][:fit], Xb[i][:fit], _mesh(b.model))
                r["direct"].append(d)
                r["procrustes"].append(p)
            results["retrieval"].setdefault(key, {})["parallel"] = r
            diag = [matrix[i, i] for i in range(common)]
            results["cka"][key]["diagonal"] = diag
            best = [max(x for x in (d, p) if x is not None) for d, p in zip(r["direct"], r["procrustes"])]
            if common >= 3 and np.std(diag) > 0 and np.std(best) > 0:
                results["cka"][key]["retrieval_correlation"] = float(np.corrcoef(diag, best)[0, 1])
            dict_pair = acfg.dictionaries.get(f"{a.language}-{b.language}")
            gold = gold_align
            if gold is None and dict_pair is not None:
                gold = dictionary_alignment(sa, sb, evalsets.read_muse_dictionary(_path(dict_pair.test, data_dir))
                                            + (evalsets.read_muse_dictionary(_path(dict_pair.train, data_dir)) if dict_pair.train else []))
            if gold is not None:
                results["word_alignment"][key] = _word_alignment(a, b, sa, sb, gold, fit, acfg, la, lb) | {
                    "gold": "alignment file" if gold_align is not None else "dictionary pairs occurring once"}
        else:
            Xa = Xb = None
        for name, files in acfg.retrieval.items():
            src_l, _, tgt_l = name.partition("-")
            if (src_l, tgt_l) != (a.language, b.language):
                continue
            if len(files) != 2:
                raise UserError(f"analysis.retrieval.{name}: {len(files)} files; expected [source file, target file]")
            ta, tb = evalsets.read_parallel(_path(files[0], data_dir), _path(files[1], data_dir))
            _, Ta, Tb = _vectors(a, b, ta, tb, acfg, la, lb, with_cka=False)
            r = {"layers": [la[i] for i in range(common)], "direct": [], "procrustes": [], "sentences": len(ta),
                 "map_fitted_on": "parallel (first sentences)" if Xa is not None else None}
            for i in range(common):
                fa, fb = (Xa[i][:fit], Xb[i][:fit]) if Xa is not None else (None, None)
                d, p = _retrieval(Ta[i], Tb[i], fa, fb, _mesh(b.model))
                r["direct"].append(d)
                r["procrustes"].append(p)
            results["retrieval"].setdefault(key, {})[Path(files[0]).stem] = r
        dcfg = acfg.dictionaries.get(f"{a.language}-{b.language}")
        if dcfg is not None:
            if a.language not in corpora or b.language not in corpora:
                raise UserError(f"analysis: word translation {a.language}-{b.language} needs text for contextual word "
                                "vectors; expected analysis.word_corpus or parallel sentences in both languages")
            results["word_translation"][key] = _word_translation(a, b, dcfg, data_dir, corpora, acfg, la, lb, candidates)
    from xlplastic.analysis.figures import write_figures

    results["figures"] = write_figures(results, out_dir)
    results["summary"] = summary_rows(results, "+".join(m.name for m in models))
    results = _jsonable(results)
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2))
    from xlplastic.analysis.figures import write_report

    write_report(results, out_dir)
    return results


def summary_rows(results: dict, model: str) -> list[dict]:
    """Headline figures as pipeline summary rows: mean CKA(i, i), best retrieval P@1 over layers, word
    translation P@1 (CSLS, NN) and best word-alignment accuracy, per language pair."""
    rows = []

    def add(task, pair, metric, value):
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            rows.append({"model": model, "stage": "analyze", "task": task, "language": pair, "metric": metric,
                         "value": float(value)})

    for pair, c in results["cka"].items():
        add("cka", pair, "mean_diagonal", float(np.mean(c["diagonal"])))
    for pair, sets in results["retrieval"].items():
        for name, r in sets.items():
            vals = [v for v in r["direct"] if v is not None]
            add(f"retrieval:{name}", pair, "best_p@1", max(vals) if vals else None)
    for pair, w in results["word_translation"].items():
        add("word_translation", pair, "p@1_csls", w.get("csls"))
        add("word_translation", pair, "p@1_nn", w.get("nn"))
    for pair, a in results["word_alignment"].items():
        vals = [v for v in a["direct"] if v is not None]
        add("word_alignment", pair, "best_accuracy", max(vals) if vals else None)
    return rows


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def analysis_section(cfg: Config) -> AnalysisConfig:
    if cfg.analysis is None:
        raise UserError("no `analysis:` section; expected one in --config or in the run's config.yaml (see docs/analysis.md)")
    return cfg.analysis


class TrainingProbe:
    """CKA(i, i) and sentence retrieval P@1 per layer on the parallel sentences, every `analysis.every`
    steps of an MLM run. The sentences are tokenised and placed on device once; a probe only dispatches
    device work on the current parameters, and its figures are read when the next probe is dispatched
    (or at the end), so the step loop never waits for it."""

    def __init__(self, cfg: Config, trainer, tokenizer, data_dir: str | None):
        acfg = cfg.analysis
        self.every = acfg.every
        par = read_parallel(acfg, data_dir)
        langs = acfg.languages or list(par)
        if len(langs) < 2 or any(l not in par for l in langs[:2]):
            raise UserError("analysis.every needs analysis.parallel with two languages; expected a parallel TSV")
        self.a, self.b = langs[0], langs[1]
        self.model = reps.from_trainer(trainer, None, tokenizer)
        self.layers = _layers(self.model, acfg)
        self.fit = int(len(par[self.a]) * acfg.fit_share)
        self.batches = {l: reps.prepare_sentences(self.model, par[l], l, batch_size=acfg.batch_size, seq_len=acfg.seq_len)
                        for l in (self.a, self.b)}
        self.pending: tuple[int, Any] | None = None

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def dispatch(self, params, step: int) -> dict | None:
        """Starts the probe of `step` (device work only); returns the previous probe's row, if any."""
        row = self.collect()
        vecs = {l: list(reps.pooled(self.model, params, batches, self.layers)) for l, batches in self.batches.items()}
        self.pending = (step, vecs)
        return row

    def collect(self) -> dict | None:
        if self.pending is None:
            return None
        step, vecs = self.pending
        self.pending = None
        with jax.transfer_guard("allow"):  # the run loop disallows implicit transfers; these are the probe's own
            Xa = np.concatenate([np.asarray(jax.device_get(v))[:, :n] for n, v in vecs[self.a]], 1)
            Xb = np.concatenate([np.asarray(jax.device_get(v))[:, :n] for n, v in vecs[self.b]], 1)
            row: dict[str, Any] = {"step": step}
            for k, layer in enumerate(self.layers):
                row[f"probe_cka_l{layer}"] = float(cka.linear_cka(Xa[k], Xb[k]))
                row[f"probe_retrieval_l{layer}"] = _retrieval(Xa[k][self.fit:], Xb[k][self.fit:], None, None)[0]
        return row
