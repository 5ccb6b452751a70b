"""The synthetic language lab: one grammar, many languages under known transformations.

Every lab language is the SAME base grammar (`make_grammar(cfg.words, cfg.seed)`) seen through a known
transformation, so parallel sentences, a gold bilingual dictionary, gold word alignments and gold POS
tags come for free:

  * `permute`: a share p of the word types (stratified by class and by frequency) get fresh surface
    forms written in a language-specific non-Latin script; the base vocabulary is Latin, so a fresh form
    shares no word and no character (hence no subword) with it. p = 1: no anchors; p = 0: same words.
  * `word_order`: "same", "reverse", or "verb_final" (VERB words moved to the end, order kept).
  * `topics`: the topic (domain) distribution of the language's own sentences.
  * `seed`: draws the fresh forms and the language's own sentences (mixed with the language's name,
    so two languages never get the same sentences or the same forms by accident).

`write_lab` writes the corpora and task files (see docs/lab.md); `transform_text` applies the same
permutation / reversal to real whitespace-tokenised text ("Fake-English").
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlplastic.config import LabConfig, LabLanguageConfig
from xlplastic.data import lab_tasks
from xlplastic.data.phrase import MIN_WORDS as PHRASE_MIN_WORDS
from xlplastic.data.phrase import NUMBER_NAMES, make_phrase_grammar
from xlplastic.data.synthetic import CODAS, ONSETS, VOWELS, CLASSES, MAX_LEN, NUM_TOPICS, Grammar, make_grammar
from xlplastic.errors import UserError
from xlplastic.paths import as_path, write_text_atomic

FORMAT = "xlplastic-lab/2"  # bump when the files written for a given config change
WORD_ORDERS = ("same", "reverse", "verb_final")
VERB = CLASSES.index("VERB")
TOPIC_TASK_MAX = 4000  # sentences of a language's own text in its topic/POS training files
DICT_TRAIN, DICT_END = 5000, 6500  # MUSE split ranks (scaled to ~77% / rest below 6500 words)
_NAME = re.compile(r"[A-Za-z0-9_]+")
_LATIN = "abdefghiklmnoprstuvz"  # the letters of the base syllables (synthetic.ONSETS/VOWELS/CODAS)
_CHARS_PER_SYLLABLE = 3.15  # mean length of a base syllable, to give fresh words similar lengths

# Alphabets for fresh forms: 20 letters each (one per base letter), all single code points that are
# stable under NFKC, NFD (accent stripping), lower-casing and case folding, are \w letters, and are not
# CJK ideographs (which BERT pre-tokenisers split into single characters). No ASCII: never shared
# with the base vocabulary.
SCRIPTS: dict[str, str] = {
    "greek": "αβγδεζηθικλμνξοπρστυ",
    "cyrillic": "абвгдежзиклмнопрстуф",
    "armenian": "".join(chr(0x561 + i) for i in range(20)),
    "georgian": "".join(chr(0x10D0 + i) for i in range(20)),
    "tifinagh": "".join(chr(0x2D30 + i) for i in range(20)),
    "ethiopic": "".join(chr(0x1200 + 8 * i) for i in range(20)),
    "syllabics": "".join(chr(0x1401 + i) for i in range(20)),
    "runic": "".join(chr(0x16A0 + i) for i in range(20)),
    "glagolitic": "".join(chr(0x2C30 + i) for i in range(20)),
    "bopomofo": "".join(chr(0x3105 + i) for i in range(20)),
}
_SCRIPT_NAMES = tuple(SCRIPTS)
_SYLLABLES = [o + v + c for o in ONSETS for v in VOWELS for c in CODAS]


# --- languages ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabLanguage:
    """A rendered lab language: a surface form for every base word id, and a word order."""

    name: str
    surface: tuple[str, ...]  # [V] surface form of each base word id in this language
    word_order: str
    word_class: tuple[int, ...] = ()  # [V] class index of each base word (needed by "verb_final")
    script: str = "latin"  # alphabet of the fresh forms ("latin" when nothing is permuted)
    permuted: tuple[bool, ...] = ()  # [V] True where the base word got a fresh form
    number: tuple[int, ...] = ()  # [V] grammatical number of each base word (0 none, 1 sg, 2 pl)


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _spec_error(where: str, spec: LabLanguageConfig) -> str | None:
    """The first problem with one language's spec, as a message, or None."""
    if not _NAME.fullmatch(spec.name or ""):
        return (f"{where}: name {spec.name!r} is not usable in file names; expected letters, digits or _ "
                "(no '-', which separates the pair names such as syn-fake)")
    p = spec.permute
    if not (isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p <= 1.0):
        return f"{where} ({spec.name}): permute is {p!r}; expected a share of word types in [0, 1]"
    if spec.word_order not in WORD_ORDERS:
        return f"{where} ({spec.name}): word_order is {spec.word_order!r}; expected one of {', '.join(WORD_ORDERS)}"
    for d, t in spec.domains.items():
        if not _NAME.fullmatch(d) or len(t) != NUM_TOPICS or not all(math.isfinite(x) and x >= 0 for x in t) or sum(t) <= 0:
            return (f"{where} ({spec.name}): domains.{d} is {list(t)}; expected a name of letters, digits or _ and "
                    f"{NUM_TOPICS} non-negative topic weights with a positive sum")
    if spec.topics is not None:
        t = spec.topics
        if len(t) != NUM_TOPICS or not all(math.isfinite(x) and x >= 0 for x in t) or sum(t) <= 0:
            return (f"{where} ({spec.name}): topics is {list(t)}; expected {NUM_TOPICS} non-negative weights "
                    "with a positive sum (they are normalised), or null for uniform")
    return None


def lab_grammar(cfg: LabConfig):
    """The lab's base grammar (`lab.grammar`): phrase structure (default) or class bigrams."""
    if cfg.grammar == "phrase":
        return make_phrase_grammar(cfg.words, cfg.seed)
    return make_grammar(cfg.words, cfg.seed)


def check_lab_config(cfg: LabConfig | dict) -> LabConfig:
    """Validates (and, from a dict, builds) a LabConfig; raises UserError naming the key."""
    if isinstance(cfg, dict):
        try:
            cfg = LabConfig.model_validate(cfg)
        except Exception as e:  # pydantic's ValidationError: keep its first line
            raise UserError(f"lab: {str(e).splitlines()[0]}; expected a lab config (see docs/lab.md)") from None
    least = PHRASE_MIN_WORDS if cfg.grammar == "phrase" else len(CLASSES)
    if cfg.words < least:
        raise UserError(f"lab.words is {cfg.words}; expected at least {least} for the {cfg.grammar} grammar")
    if cfg.sentences < 1 or cfg.test_sentences < 1:
        raise UserError(f"lab.sentences is {cfg.sentences} and lab.test_sentences is {cfg.test_sentences}; "
                        "expected both at least 1")
    if not cfg.languages:
        raise UserError("lab.languages is empty; expected at least one language (the first is the source)")
    seen: set[str] = set()
    for i, spec in enumerate(cfg.languages):
        msg = _spec_error(f"lab.languages[{i}]", spec)
        if msg:
            raise UserError(msg)
        if spec.name in seen:
            raise UserError(f"lab.languages[{i}]: duplicate language name {spec.name!r}; expected unique names")
        seen.add(spec.name)
    return cfg


def _stratified_pick(strata: list[np.ndarray], share: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly round(N * share) items, spread proportionally over `strata` (largest remainder, ties
    broken at random) and, inside each stratum (items ordered by frequency), one at random from each of
    k equal runs of the ranking, so frequent and rare items are hit alike. Returns the chosen items."""
    sizes = np.array([len(s) for s in strata])
    n = int(sizes.sum())
    k_total = int(math.floor(n * share + 0.5))
    if k_total == 0:
        return np.zeros(0, dtype=np.int64)
    quota = sizes * (k_total / n)
    k = np.floor(quota).astype(int)
    rest = k_total - int(k.sum())
    frac = quota - k
    order = np.lexsort((rng.random(len(strata)), -frac))  # largest remainder first, random tie-break
    k[order[:rest]] += 1
    picks = []
    for items, kc in zip(strata, k):
        if kc == 0:
            continue
        m = len(items)
        lo = (np.arange(kc) * m) // kc
        hi = (np.arange(1, kc + 1) * m) // kc
        picks.append(items[lo + (rng.random(kc) * (hi - lo)).astype(int)])
    return np.concatenate(picks)


def _syllables_for(lengths: Iterable[int]) -> np.ndarray:
    """Syllable count for fresh words that roughly keeps each original word's length."""
    return np.maximum(1, np.rint(np.asarray(list(lengths), dtype=float) / _CHARS_PER_SYLLABLE)).astype(int)


def _fresh_words(n_syllables: np.ndarray, rng: np.random.Generator, script: str, taken: set[str]) -> list[str]:
    """Distinct pronounceable pseudo-words in `script` (base syllables transliterated letter by letter),
    none in `taken` (which is updated); word i has n_syllables[i] syllables."""
    table = str.maketrans(_LATIN, SCRIPTS[script])
    syll = [s.translate(table) for s in _SYLLABLES]
    out: list[str | None] = [None] * len(n_syllables)
    todo = np.arange(len(n_syllables))
    while todo.size:
        k = n_syllables[todo]
        draws = rng.integers(len(syll), size=(len(todo), int(k.max())))
        retry = []
        for j, i in enumerate(todo):
            w = "".join(syll[x] for x in draws[j, : k[j]])
            if len(w) >= 2 and w not in taken:
                taken.add(w)
                out[i] = w
            else:
                retry.append(i)
        todo = np.array(retry, dtype=np.int64)
        n_syllables = n_syllables.copy()
        n_syllables[todo] += rng.random(len(todo)) < 0.2  # crowded short forms: sometimes go longer
    return out  # type: ignore[return-value]


def script_for(name: str) -> str:
    """The alphabet of a lab language's fresh forms, fixed by its name (recorded in lab.json)."""
    return _SCRIPT_NAMES[_name_key(name) % len(_SCRIPT_NAMES)]


def build_language(grammar: Grammar, spec: LabLanguageConfig) -> LabLanguage:
    """The language `spec` over `grammar`: which words get fresh forms, and those forms."""
    msg = _spec_error("lab language", spec)
    if msg:
        raise UserError(msg)
    V = len(grammar.words)
    rng = np.random.default_rng([spec.seed, _name_key(spec.name), 0x1AB])
    freq = grammar.frequencies()
    rank = np.lexsort((np.arange(V), -freq))  # most frequent first, ties by id
    strata = [rank[grammar.word_class[rank] == c] for c in range(len(CLASSES))]
    chosen = np.sort(_stratified_pick(strata, float(spec.permute), rng))
    surface = list(grammar.words)
    permuted = np.zeros(V, dtype=bool)
    script = "latin"
    if chosen.size:
        script = script_for(spec.name)
        fresh = _fresh_words(_syllables_for(len(grammar.words[i]) for i in chosen), rng, script, set(surface))
        for i, w in zip(chosen, fresh):
            surface[i] = w
        permuted[chosen] = True
    return LabLanguage(spec.name, tuple(surface), spec.word_order,
                       tuple(int(c) for c in grammar.word_class), script, tuple(bool(x) for x in permuted),
                       tuple(int(x) for x in grammar.number))


def _order(word_order: str, is_verb: np.ndarray | None, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """perm [S, M]: output position -> base position; positions past a sentence's end stay at the end."""
    S, M = ids.shape
    pos = np.broadcast_to(np.arange(M), (S, M))
    valid = pos < lengths[:, None]
    if word_order == "same":
        return pos.copy()
    if word_order == "reverse":
        return np.where(valid, lengths[:, None] - 1 - pos, pos)
    if word_order == "verb_final":
        if is_verb is None:
            raise UserError("word_order 'verb_final' needs word classes; expected a language built by build_language")
        key = np.where(valid, is_verb[ids].astype(np.int8), 2)
        return np.argsort(key, axis=1, kind="stable")
    raise UserError(f"word_order is {word_order!r}; expected one of {', '.join(WORD_ORDERS)}")


def _is_verb(lang: LabLanguage) -> np.ndarray | None:
    return np.asarray(lang.word_class) == VERB if lang.word_class else None


def render(lang: LabLanguage, ids_sentence: Sequence[int]) -> tuple[list[str], list[int]]:
    """One base sentence (word ids) in `lang`: its words in the language's order, and the permutation
    (position in the output -> position in the base sentence)."""
    ids = np.asarray(ids_sentence, dtype=np.int64).reshape(1, -1)
    perm = _order(lang.word_order, _is_verb(lang), ids, np.array([ids.shape[1]]))[0]
    return [lang.surface[i] for i in ids[0, perm]], perm.tolist()


@dataclass
class _Rendered:
    lines: list[str]  # every sentence
    ids: list[np.ndarray]  # the first `detail` sentences: base word ids in output order
    perm: list[np.ndarray]  # the same sentences: output position -> base position


def _render_many(lang: LabLanguage, ids: np.ndarray, lengths: np.ndarray, detail: int | None = None) -> _Rendered:
    """All sentences as lines; ids and permutations only for the first `detail` (default all)."""
    perm = _order(lang.word_order, _is_verb(lang), ids, lengths)
    out_ids = np.take_along_axis(ids, perm, axis=1)
    valid = np.arange(ids.shape[1])[None] < lengths[:, None]
    flat = np.array(lang.surface, dtype=object)[out_ids[valid]].tolist()  # row-major: sentence by sentence
    ends = np.cumsum(lengths).tolist()
    lines = [" ".join(flat[a:b]) for a, b in zip([0] + ends[:-1], ends)]
    d = len(lines) if detail is None else min(detail, len(lines))
    return _Rendered(lines, [out_ids[s, :n] for s, n in enumerate(lengths[:d])],
                     [perm[s, :n] for s, n in enumerate(lengths[:d])])


# --- files ----------------------------------------------------------------------------------------
def _lines_text(lines: Iterable[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _conllu(lang: LabLanguage, split: str, r: _Rendered, topics: np.ndarray) -> str:
    """CoNLL-U with gold UPOS = the word's class and FEATS = its number (LEMMA, XPOS, HEAD, DEPREL, DEPS,
    MISC = _)."""
    feats = [f"Number={NUMBER_NAMES[n]}" if n else "_" for n in (lang.number or (0,) * len(lang.surface))]
    token = np.array([f"\t{w}\t_\t{CLASSES[c]}\t_\t{f}\t_\t_\t_\t_\n"
                      for w, c, f in zip(lang.surface, lang.word_class, feats)], dtype=object)
    num = [str(i) for i in range(1, MAX_LEN + 1)]
    out = []
    for k, (line, row) in enumerate(zip(r.lines, r.ids)):
        out.append(f"# sent_id = {lang.name}-{split}-{k + 1}\n# topic = t{topics[k]}\n# text = {line}\n")
        out.append("".join(map(operator.add, num, token[row].tolist())))
        out.append("\n")
    return "".join(out)


def _topic_tsv(lines: list[str], topics: np.ndarray) -> str:
    return "label\ttext\n" + "".join(f"t{t}\t{line}\n" for t, line in zip(topics, lines))


def _lines_of(lang: LabLanguage, sents: list[np.ndarray]) -> list[str]:
    """Base sentences (id arrays of any lengths) rendered in `lang`, one line each."""
    if not sents:
        return []
    lengths = np.array([len(x) for x in sents])
    ids = np.zeros((len(sents), int(lengths.max())), np.int64)
    for i, x in enumerate(sents):
        ids[i, : len(x)] = x
    return _render_many(lang, ids, lengths, detail=0).lines


def _nli_tsv(lang: LabLanguage, pairs) -> str:
    premises = _lines_of(lang, [a for a, _, _ in pairs])
    hypotheses = _lines_of(lang, [b for _, b, _ in pairs])
    return "label\tpremise\thypothesis\n" + "".join(
        f"{label}\t{p}\t{h}\n" for (_, _, label), p, h in zip(pairs, premises, hypotheses))


def _single_tsv(lang: LabLanguage, items) -> str:
    lines = _lines_of(lang, [x for x, _ in items])
    return "label\ttext\n" + "".join(f"{label}\t{line}\n" for (_, label), line in zip(items, lines))


def _lang_files(name: str) -> dict[str, str]:
    return {"train": f"{name}.train.txt", "valid": f"{name}.valid.txt",
            "topic_train": f"{name}.topic.train.tsv", "topic_test": f"{name}.topic.test.tsv",
            "pos_train": f"{name}.pos.train.conllu", "pos_test": f"{name}.pos.test.conllu",
            "nli_train": f"{name}.nli.train.tsv", "nli_test": f"{name}.nli.test.tsv",
            "agreement_train": f"{name}.agreement.train.tsv", "agreement_test": f"{name}.agreement.test.tsv"}


def _pair_files(pair: str) -> dict[str, str]:
    return {"dict_train": f"dict.{pair}.{0}-{DICT_TRAIN}.txt", "dict_test": f"dict.{pair}.{DICT_TRAIN}-{DICT_END}.txt",
            "parallel": f"parallel.{pair}.tsv", "align": f"parallel.{pair}.align"}


def gold_dictionaries(cfg: LabConfig, language: str) -> list[str]:
    """The lab's gold dictionary files source -> `language` (relative to the lab folder); [] when
    `language` is the source or not a lab language."""
    names = [l.name for l in cfg.languages]
    if language not in names[1:]:
        return []
    files = _pair_files(f"{names[0]}-{language}")
    return [files["dict_train"], files["dict_test"]]


def gold_tags(cfg: LabConfig, language: str) -> list[str]:
    """The lab's tagged (CoNLL-U) files of `language` (relative to the lab folder); [] when it is not a
    lab language."""
    if language not in [l.name for l in cfg.languages]:
        return []
    files = _lang_files(language)
    return [files["pos_train"], files["pos_test"]]


def dict_split(num_words: int) -> tuple[int, int]:
    """(end of the train split, end of the test split) in frequency ranks: MUSE's 0-5000 / 5000-6500,
    scaled to 5000/6500 of the vocabulary (~77% / rest) when it has fewer than 6500 words."""
    if num_words >= DICT_END:
        return DICT_TRAIN, DICT_END
    return int(round(num_words * DICT_TRAIN / DICT_END)), num_words


def _abs_map(out: Path, rel: dict[str, dict[str, str]]) -> dict[str, dict[str, Path]]:
    return {k: {f: out / p for f, p in v.items()} for k, v in rel.items()}


def _key(cfg: LabConfig) -> dict:
    return {"format": FORMAT, "config": cfg.model_dump(mode="json")}


def _existing(out: Path, key: dict) -> tuple[dict | None, dict | None]:
    """(old lab.json content or None, its file map when it matches `key` and all its files exist)."""
    meta_path = out / "lab.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    if not isinstance(meta, dict):
        return None, None
    files = meta.get("files")
    same = {k: meta.get(k) for k in key} == key and isinstance(files, dict)
    if same and all((out / p).is_file() for v in files.values() for p in v.values()):
        return meta, files
    return meta, None


def write_lab(cfg: LabConfig | dict, out_dir: str | Path) -> dict[str, dict[str, Path]]:
    """Writes the lab's corpora, task files, dictionaries and parallel data into `out_dir` (see
    docs/lab.md) and returns {language: {kind: path}, "SRC-L": {kind: path}}. Deterministic; when
    out_dir/lab.json already describes the same config (and its files exist), nothing is regenerated."""
    cfg = check_lab_config(cfg)
    out = as_path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; expected a folder for the lab's files")
    key = _key(cfg)
    old, files = _existing(out, key)
    if files is not None:
        return _abs_map(out, files)
    out.mkdir(parents=True, exist_ok=True)
    if old is not None:
        (out / "lab.json").unlink()  # from here until the end, the folder claims no complete lab

    grammar = lab_grammar(cfg)
    V = cfg.words
    langs = [build_language(grammar, spec) for spec in cfg.languages]
    src = langs[0]
    n_valid = max(200, cfg.sentences // 50)
    n_task = min(TOPIC_TASK_MAX, cfg.sentences)
    t_ids, t_len, t_top = grammar.sample_ids(cfg.test_sentences, np.random.default_rng([cfg.seed, 0x7E57]))
    structural = grammar.kind == "phrase"
    if structural:  # the structural tasks' test items are the same base sentences in every language (parallel)
        nli_test = lab_tasks.nli_pairs(grammar, cfg.test_sentences, np.random.default_rng([cfg.seed, 0x7E57, 1]))
        agr_test = lab_tasks.agreement_items(grammar, cfg.test_sentences, np.random.default_rng([cfg.seed, 0x7E57, 2]))

    rel: dict[str, dict[str, str]] = {}
    stats: dict[str, dict] = {}
    tests: dict[str, _Rendered] = {}
    train_types: dict[str, set[str]] = {}
    for spec, lang in zip(cfg.languages, langs):
        rng = np.random.default_rng([spec.seed, _name_key(spec.name), 0x5A3])
        ids, lengths, topics = grammar.sample_ids(cfg.sentences + n_valid, rng, spec.topics)
        r = _render_many(lang, ids, lengths, detail=n_task)
        test = tests[lang.name] = _render_many(lang, t_ids, t_len)
        task = _Rendered(r.lines[:n_task], r.ids, r.perm)
        names = rel[lang.name] = _lang_files(lang.name)
        write_text_atomic(out / names["train"], _lines_text(r.lines[: cfg.sentences]))
        write_text_atomic(out / names["valid"], _lines_text(r.lines[cfg.sentences:]))
        write_text_atomic(out / names["topic_train"], _topic_tsv(task.lines, topics))
        write_text_atomic(out / names["topic_test"], _topic_tsv(test.lines, t_top))
        write_text_atomic(out / names["pos_train"], _conllu(lang, "train", task, topics))
        write_text_atomic(out / names["pos_test"], _conllu(lang, "test", test, t_top))
        if structural:
            task_rng = np.random.default_rng([spec.seed, _name_key(spec.name), 0x7A5C])
            write_text_atomic(out / names["nli_train"], _nli_tsv(lang, lab_tasks.nli_pairs(grammar, n_task, task_rng, spec.topics)))
            write_text_atomic(out / names["nli_test"], _nli_tsv(lang, nli_test))
            agr = lab_tasks.agreement_items(grammar, n_task, task_rng, spec.topics)
            write_text_atomic(out / names["agreement_train"], _single_tsv(lang, agr))
            write_text_atomic(out / names["agreement_test"], _single_tsv(lang, agr_test))
        else:
            for k in ("nli_train", "nli_test", "agreement_train", "agreement_test"):
                del names[k]
        for d, weights in sorted(spec.domains.items()):  # other domains: their own draws, same language
            d_rng = np.random.default_rng([spec.seed, _name_key(spec.name), _name_key(d), 0xD0])
            d_ids, d_len, _ = grammar.sample_ids(cfg.sentences, d_rng, weights)
            names[f"train_{d}"] = f"{lang.name}.{d}.train.txt"
            write_text_atomic(out / names[f"train_{d}"], _lines_text(_render_many(lang, d_ids, d_len, detail=0).lines))

        train_ids = ids[: cfg.sentences]
        used = np.zeros(V, dtype=bool)
        used[train_ids[np.arange(train_ids.shape[1])[None] < lengths[: cfg.sentences, None]]] = True
        train_types[lang.name] = {lang.surface[i] for i in np.flatnonzero(used)}
        same_as_src = np.array(lang.surface) == np.array(src.surface)
        tp = np.full(NUM_TOPICS, 1.0 / NUM_TOPICS) if spec.topics is None else np.array(spec.topics) / sum(spec.topics)
        emp = np.bincount(topics[: cfg.sentences], minlength=NUM_TOPICS) / cfg.sentences
        stats[lang.name] = {
            "script": lang.script,
            "word_order": lang.word_order,
            "permuted_types": int(sum(lang.permuted)),
            "anchors_gold": round(float(same_as_src.mean()), 6),  # share of base words written as in the source
            "types": len(train_types[lang.name]),
            "anchors_measured": round(len(train_types[lang.name] & train_types[src.name])
                                      / max(1, len(train_types[lang.name])), 6),
            "tokens": int(lengths[: cfg.sentences].sum()),
            "sentences": {"train": cfg.sentences, "valid": n_valid, "task_train": n_task, "test": cfg.test_sentences},
            "topics": [round(float(x), 6) for x in tp],
            "topics_measured": [round(float(x), 6) for x in emp],
        }

    rank = np.lexsort((np.arange(V), -grammar.frequencies()))
    end_train, end_test = dict_split(V)
    for lang in langs[1:]:
        pair = f"{src.name}-{lang.name}"
        names = rel[pair] = _pair_files(pair)
        entries = [f"{src.surface[i]} {lang.surface[i]}" for i in rank]
        write_text_atomic(out / names["dict_train"], _lines_text(entries[:end_train]))
        write_text_atomic(out / names["dict_test"], _lines_text(entries[end_train:end_test]))
        a, b = tests[src.name], tests[lang.name]
        write_text_atomic(out / names["parallel"], f"{src.name}\t{lang.name}\n"
               + "".join(f"{x}\t{y}\n" for x, y in zip(a.lines, b.lines)))
        align = []
        for pa, pb in zip(a.perm, b.perm):
            inv = np.argsort(pb)  # base position -> position in the target sentence
            align.append(" ".join(f"{i}-{j}" for i, j in enumerate(inv[pa].tolist())))
        write_text_atomic(out / names["align"], _lines_text(align))
        stats[lang.name]["dict_pairs"] = {"train": end_train, "test": end_test - end_train}

    if old is not None and isinstance(old.get("files"), dict):  # files of an earlier config that are gone now
        keep = {p for v in rel.values() for p in v.values()}
        for v in old["files"].values():
            for p in (v.values() if isinstance(v, dict) else ()):
                if isinstance(p, str) and p not in keep and "/" not in p and (out / p).is_file():
                    (out / p).unlink()
    meta = {**key, "source": src.name, "languages": stats, "files": rel}
    write_text_atomic(out / "lab.json", json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return _abs_map(out, rel)


# --- real text ------------------------------------------------------------------------------------
def _word_seed(seed: int, word: str) -> list[int]:
    return [seed, int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")]


def _check_text_args(permute: float, word_order: str) -> None:
    if not (isinstance(permute, (int, float)) and math.isfinite(permute) and 0.0 <= permute <= 1.0):
        raise UserError(f"permute is {permute!r}; expected a share of word types in [0, 1]")
    if word_order == "verb_final":
        raise UserError("word_order 'verb_final' is not defined for untagged text (no gold verbs); "
                        "expected 'same' or 'reverse' (verb_final exists only in the synthetic lab)")
    if word_order not in ("same", "reverse"):
        raise UserError(f"word_order is {word_order!r}; expected 'same' or 'reverse'")


class _TextMapper:
    """The word dictionary of a text transformation; words outside the counted vocabulary get a
    deterministic decision and form of their own (from a hash of the word), added as they appear."""

    def __init__(self, counts: Counter, permute: float, seed: int, script: str | None):
        self.permute, self.seed = permute, seed
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        chars = {ch for w in counts for ch in w}
        if script is None:  # first alphabet (rotated by seed) that the text does not use
            names = _SCRIPT_NAMES[seed % len(_SCRIPT_NAMES):] + _SCRIPT_NAMES[: seed % len(_SCRIPT_NAMES)]
            script = next((s for s in names if not chars & set(SCRIPTS[s])), names[0])
        elif script not in SCRIPTS:
            raise UserError(f"script is {script!r}; expected one of {', '.join(SCRIPTS)}")
        self.script = script
        words = [w for w, _ in ranked]
        rng = np.random.default_rng([seed, 0x7E47])
        chosen = _stratified_pick([np.arange(len(words))], permute, rng) if words else np.zeros(0, int)
        chosen.sort()
        self.taken = set(words)
        fresh = _fresh_words(_syllables_for(len(words[i]) for i in chosen), rng, script, self.taken)
        self.mapping = {w: w for w in words}
        for i, f in zip(chosen, fresh):
            self.mapping[words[i]] = f
        self.permuted = len(chosen)

    def __call__(self, word: str) -> str:
        out = self.mapping.get(word)
        if out is None:
            rng = np.random.default_rng(_word_seed(self.seed, word))
            out = word
            # a kept word that happens to equal an earlier fresh form is given a form of its own, so the
            # dictionary stays one-to-one
            if rng.random() < self.permute or word in self.taken:
                out = _fresh_words(_syllables_for([len(word)]), rng, self.script, self.taken)[0]
                self.permuted += 1
            self.taken.add(word)
            self.mapping[word] = out
        return out


def _transform_line(line: str, mapper: _TextMapper, word_order: str) -> str:
    words = [mapper(w) for w in line.split()]
    return " ".join(reversed(words) if word_order == "reverse" else words)


def _vocab_counts(vocab_from) -> Counter:
    if isinstance(vocab_from, (str, bytes)):
        raise UserError("vocab_from is a single string; expected a sequence of lines or words")
    return Counter(w for line in vocab_from for w in line.split())


def transform_text(lines: Iterable[str], *, permute: float, word_order: str = "same", seed: int = 1,
                   vocab_from: Sequence[str] | None = None,
                   script: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The lab's transformations on real whitespace-tokenised text ("Fake-English"): a share `permute`
    of the word types (counted over `vocab_from`, lines or words, else over `lines`; stratified by
    frequency) is mapped to fresh pseudo-words in a script the text does not use (default) or
    `script`; "reverse" reverses each line. Returns the lines and the word dictionary (every word seen,
    unchanged ones mapped to themselves), so one dictionary can carry train and test files alike."""
    out, mapper = _transform(list(lines), permute, word_order, seed, vocab_from, script)
    return out, mapper.mapping


def _transform(lines: list[str], permute, word_order, seed, vocab_from, script) -> tuple[list[str], _TextMapper]:
    _check_text_args(permute, word_order)
    mapper = _TextMapper(_vocab_counts(lines if vocab_from is None else vocab_from), float(permute), seed, script)
    return [_transform_line(line, mapper, word_order) for line in lines], mapper


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: file not found; expected {what}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); expected {what}") from None


def transform_text_file(src: Path | str, dst: Path | str, dict_out: Path | str | None = None, **kw) -> dict:
    """File version of `transform_text` (keywords as there; `vocab_from` may also be a file path).
    Writes `dst` (and the dictionary, `src_word tgt_word` per line in frequency order, to `dict_out`)
    atomically; returns stats."""
    src, dst = Path(src), Path(dst)
    lines = _read_lines(src, "a text file with one sentence per line")
    vocab = kw.get("vocab_from")
    if isinstance(vocab, (str, Path)):
        kw["vocab_from"] = _read_lines(Path(vocab), "a text file for vocab_from")
    unknown = set(kw) - {"permute", "word_order", "seed", "vocab_from", "script"}
    if unknown or "permute" not in kw:
        raise UserError(f"transform_text_file: {'unknown option(s) ' + ', '.join(sorted(unknown)) if unknown else 'permute missing'}; "
                        "expected permute=, and optionally word_order=, seed=, vocab_from=, script=")
    out, mapper = _transform(lines, kw["permute"], kw.get("word_order", "same"), kw.get("seed", 1),
                             kw.get("vocab_from"), kw.get("script"))
    mapping = mapper.mapping
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dst, _lines_text(out))
    if dict_out is not None:
        dict_out = Path(dict_out)
        dict_out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(dict_out, _lines_text(f"{a} {b}" for a, b in mapping.items()))
    in_counts = Counter(w for line in lines for w in line.split())
    tokens = sum(in_counts.values())
    kept_tokens = sum(c for w, c in in_counts.items() if mapping[w] == w)
    return {
        "src": str(src), "dst": str(dst), "dict": None if dict_out is None else str(dict_out),
        "lines": len(lines), "tokens": tokens, "types": len(in_counts),
        "permuted_types": sum(1 for w in in_counts if mapping[w] != w),
        "anchor_share_types": round(sum(1 for w in in_counts if mapping[w] == w) / max(1, len(in_counts)), 6),
        "anchor_share_tokens": round(kept_tokens / max(1, tokens), 6),
        "word_order": kw.get("word_order", "same"), "script": mapper.script,
    }
