"""Typed experiment configuration: YAML files with `base:` inheritance and dotted CLI overrides.

Config is data: one pydantic schema, strict (unknown keys and wrong types are errors that name the key
and the file), resolved once and written to the run directory so a run can be reproduced from it alone.
"""

from __future__ import annotations

import copy
import re
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from xlplastic.errors import UserError


class _Loader(yaml.SafeLoader):
    """Safe YAML, plus `1e-4` read as a float (YAML 1.1 would read it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?(?:\d[\d_]*)?\.\d*(?:[eE][-+]?\d+)?$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class SeparateConfig(_Strict):
    """Language-specific copies of parameters ("Sep" in Conneau, Wu et al., 2020): each language of
    `model.languages` gets its own token embeddings (hence its own tied softmax), position embeddings
    and bottom `layers` transformer layers; every other parameter is shared."""

    embeddings: bool = False  # token embeddings (and the tied output projection) per language
    positions: bool | None = None  # position embeddings per language; None = as `embeddings` (the paper's Sep Emb)
    layers: int = 0  # the bottom N transformer layers per language (Sep L1-N)
    frozen_in_tasks: bool = True  # task fine-tuning leaves language-specific copies untouched (as the paper)

    @property
    def any(self) -> bool:
        return self.embeddings or bool(self.positions) or self.layers > 0

    @property
    def position_copies(self) -> bool:
        return self.embeddings if self.positions is None else self.positions


class ModelConfig(_Strict):
    """Encoder shape and numerics. `vocab_size: null` takes the tokenizer's size."""

    preset: Literal["tiny", "small", "base", "large"] | None = None
    vocab_size: int | None = None
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 1024
    max_positions: int = 514
    type_vocab_size: int = 0  # 0 = no token-type embedding (RoBERTa/XLM-R), 2 = BERT
    num_languages: int = 0  # 0 = no language embedding (XLM-style when > 0)
    # The model's languages in order: a batch's `lang` ids index this list (corpora of other names are an
    # error). Needed by `separate`; empty = the corpora's order.
    languages: list[str] = Field(default_factory=list)
    separate: SeparateConfig = Field(default_factory=SeparateConfig)
    norm: Literal["post", "pre"] = "post"  # post-LN is BERT/RoBERTa; pre-LN trains more stably when deep
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    # > 0: a learned attention-score bias per head and relative offset j - i, clipped to +-this (T5; part of
    # the body group). Not in BERT/RoBERTa: an inductive bias for small lab models, which otherwise spend
    # thousands of steps on a plateau before attention finds the neighbouring words
    relative_attention: int = 0
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; parameters stay param_dtype
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: Literal["none", "block", "attention"] = "none"
    attention_impl: Literal["xla", "cudnn"] | None = None  # None lets JAX pick (cuDNN flash on GPU)

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        bad = [l for l in self.languages if not re.fullmatch(r"[A-Za-z0-9_]+", l)]
        if bad or len(set(self.languages)) != len(self.languages):
            raise ValueError(f"languages {self.languages}: expected distinct names of letters, digits or _")
        if self.separate.any and len(self.languages) < 2:
            raise ValueError("separate parameters need model.languages to list at least two languages")
        if not 0 <= self.separate.layers <= self.num_layers:
            raise ValueError(f"separate.layers is {self.separate.layers}; expected 0..num_layers ({self.num_layers})")
        if self.num_languages and self.languages and self.num_languages != len(self.languages):
            raise ValueError(f"num_languages {self.num_languages} but {len(self.languages)} languages are listed; expected equal")
        return self

    @property
    def uses_language_ids(self) -> bool:
        """Whether the forward pass needs each row's language (language embeddings or separate copies)."""
        return bool(self.num_languages) or self.separate.any


PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, mlp_dim=128),
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, mlp_dim=1024),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
}


class MeshConfig(_Strict):
    """Device mesh `data x fsdp x tensor`; one axis may be -1 = "all remaining devices"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # logical axis -> mesh axes; params and activations share one table (MaxText style).
    rules: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "batch": ["data", "fsdp"],
            "vocab": ["tensor"],
            "embed": ["fsdp"],
            "heads": ["tensor"],
            "mlp": ["tensor"],
            "kv": [],
            "positions": [],
            "types": [],
            "languages": [],
            "length": [],
            "relative": [],
        }
    )


class CodeSwitchConfig(_Strict):
    """Extra anchors by dictionary code-switching (Conneau, Wu et al., 2020): each word of the corpus that
    the dictionary knows becomes one of its translations with probability `rate`, but at most
    `max_share` of the words of each block of `block_words` words (about one batch) are switched."""

    dictionary: str  # MUSE format, `src tgt` per line (relative to data.data_dir); several lines per word = choices
    reverse: bool = False  # use the dictionary tgt -> src (for the other language's corpus)
    rate: float = 0.3
    max_share: float = 0.15
    block_words: int = 4096
    seed: int = 0


class CorpusConfig(_Strict):
    """One text source. `kind` picks the reader; `max_tokens` caps it ("first N tokens")."""

    language: str = "en"
    kind: Literal["text", "jsonl", "hf", "tfds", "synthetic"] = "text"
    path: str | None = None  # text/jsonl file or folder; HF local data files
    name: str | None = None  # HF dataset name / TFDS name
    subset: str | None = None  # HF config name
    split: str = "train"
    field: str = "text"  # JSONL / HF / TFDS text field
    streaming: bool = False
    max_tokens: int | None = None
    max_lines: int | None = None
    code_switch: CodeSwitchConfig | None = None  # MLM training text only (tokenizers see the original)
    # synthetic source: a generated class-bigram language (see xlplastic/data/synthetic.py)
    synthetic_sentences: int = 2000
    synthetic_words: int = 300
    synthetic_seed: int = 0


class TokenizerConfig(_Strict):
    """Load `path` (a tokenizer.json) or train one of `kind` on the training corpora."""

    path: str | None = None
    kind: Literal["bpe", "unigram", "wordpiece", "wordlevel"] = "bpe"
    vocab_size: int = 8000
    lowercase: bool = False
    min_frequency: int = 2
    train_max_lines: int | None = 1_000_000
    # Multilingual layouts (Conneau, Wu et al., 2020; see xlplastic/data/vocabulary.py): one tokenizer per
    # language (`vocab_size` each) instead of a joint one, and whether languages share ids (anchors).
    per_language: bool = False
    anchors: Literal["shared", "none"] = "shared"


class DataConfig(_Strict):
    corpora: list[CorpusConfig] = Field(default_factory=lambda: [CorpusConfig(kind="synthetic")])
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    seq_len: int = 128
    alpha: float = 0.7  # language sampling probability ∝ share ** alpha
    eval_sequences: int = 64  # held-out packed sequences (taken from the end of each corpus)
    mask_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    random_within_language: bool = False  # random replacements drawn from the row's language's own tokens
    cache_dir: str | None = None  # tokenized/packed corpus cache; default <run_dir>/data_cache
    data_dir: str | None = None  # root for relative corpus paths (e.g. ../shared/data)


class OptimizerConfig(_Strict):
    lr: float = 5e-4
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.01
    clip_norm: float | None = None  # global-norm clipping; None = off


class ScheduleConfig(_Strict):
    kind: Literal["linear", "polynomial", "inverse_sqrt", "cosine", "constant"] = "linear"
    warmup_steps: int = 0
    end_lr: float = 0.0
    power: float = 1.0  # polynomial decay power


class TrainConfig(_Strict):
    steps: int = 100
    trainable: list[str] | None = None  # parameter groups that train (see groups.py); None = all of them
    seed: int = 0
    batch_size: int = 32  # global batch, in sequences
    grad_accum: int = 1
    steps_per_call: int = Field(1, ge=1)  # train steps per jitted call (the same result, less per-call work)
    # XLA DebugOptions the train/eval steps compile with (e.g. train.CPU_ONEDNN_OPTIONS); None = XLA's defaults
    compiler_options: dict[str, str | bool | int | float] | None = None
    log_every: int = 1
    eval_every: int = 0  # 0 = only at the end
    eval_batches: int = 4
    progress: bool = True
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)


class ForgettingConfig(_Strict):
    """Active forgetting (Chen et al., 2023): re-draw `groups` after every update whose count is a
    multiple of `every`, restart their optimizer state, and give them an LR schedule per episode."""

    every: int = 0  # K; 0 = off
    groups: list[str] = Field(default_factory=lambda: ["token_embedding"])
    start: int = 0  # no reset before this step
    stop: int | None = None  # no reset after this step (None = until the end; never at the final step)
    init: Literal["normal", "matrix_stats"] = "normal"  # N(0, std), or N(mean, std) of the matrix being reset
    std: float = 0.02
    lr: float | None = None  # peak LR of the reset groups in each episode; None = train.optimizer.lr
    warmup_steps: int | None = None  # per episode; None = the run's warm-up compressed by steps/every
    end_lr: float = 0.0  # the episode's linear decay ends here

    @model_validator(mode="after")
    def _check(self) -> "ForgettingConfig":
        from xlplastic.groups import GROUPS

        unknown = [g for g in self.groups if g.split("@", 1)[0] not in GROUPS]
        if unknown:
            raise ValueError(f"unknown parameter group(s) {', '.join(unknown)}; expected some of {', '.join(GROUPS)}")
        if self.every < 0:
            raise ValueError(f"forgetting.every must be >= 0 (0 = off), got {self.every}")
        return self


class MapEmbeddingsConfig(_Strict):
    """Token embeddings (and every other vocabulary-sized leaf) of this run's vocabulary gathered from
    another run's through a word dictionary: row t is the row of the source word that the dictionary
    gives for token t. With a gold dictionary this is the oracle assembly of the lab; both tokenizers
    must be word-level (one token per word), since only then do tokens correspond one to one."""

    dictionaries: list[str]  # MUSE-format files `source target` (relative to data.data_dir); the first pair of a word wins
    from_run: str | None = None  # whose embeddings (and tokenizer) are mapped; None = init.from_run


class InitConfig(_Strict):
    """Where parameters start: freshly drawn (default) or copied from other runs' latest checkpoints.
    Assembly is this too: `groups_from: {token_embedding: <adapted run>}` over `from_run: <task run>`."""

    from_run: str | None = None  # a run directory (or its checkpoints/ folder)
    groups_from: dict[str, str] = Field(default_factory=dict)  # group -> run directory, overriding from_run
    reinit: list[str] = Field(default_factory=list)  # groups drawn fresh instead of copied (N(0, std), pad row 0)
    std: float = 0.02
    map_embeddings: MapEmbeddingsConfig | None = None  # token embeddings through a word dictionary (the oracle)


class TaskConfig(_Strict):
    """A downstream task: fine-tuned on `train` (source language), scored on each `test` language."""

    name: str = "xnli"
    kind: Literal["classification", "pos", "ner", "parsing", "qa"] = "classification"
    train: str | None = None  # file in a format of xlplastic/tasks/readers.py (relative to data.data_dir)
    hf: dict[str, Any] | None = None  # instead of `train`: {name, subset, split, data_files} for HF `datasets`
    dev: str | None = None  # source-language dev file (model selection / the source score)
    test: dict[str, str] = Field(default_factory=dict)  # language -> test file (zero-shot evaluation)
    language: str | None = None  # keep rows of this language (original multi-language XNLI files)
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    seq_len: int = 128
    doc_stride: int = 128  # QA: sliding-window stride over long contexts
    max_query_len: int = 64
    max_answer_len: int = 30
    punct: Literal["include", "exclude"] = "include"  # parsing: score punctuation (CoNLL 2018) or not
    # classification: the bos state (RoBERTa), the mean over tokens, or for sentence pairs each sentence's
    # mean combined as [u, v, |u-v|, u*v] (InferSent / Sentence-BERT)
    pooling: Literal["bos", "mean", "pair"] = "bos"


class LabLanguageConfig(_Strict):
    """One language of the synthetic lab: the base grammar under a known transformation."""

    name: str
    permute: float = 0.0  # share of word types given new, unrelated surface forms (1.0 = no anchors)
    word_order: Literal["same", "reverse", "verb_final"] = "same"
    topics: list[float] | None = None  # topic (domain) distribution of its sentences; None = uniform
    # further training corpora of the same language from other domains: name -> topic weights, written
    # as <language>.<name>.train.txt (`lab.sentences` sentences each; e.g. the Wiki-CC setting)
    domains: dict[str, list[float]] = Field(default_factory=dict)
    seed: int = 1  # draws the new surface forms and this language's sentences


class LabConfig(_Strict):
    """A generated family of languages with gold structure (see xlplastic/data/lab.py)."""

    # `phrase`: clauses, noun phrases, agreement and negation (data/phrase.py), with the structural tasks;
    # `bigram`: the class-bigram grammar of the first lab studies (data/synthetic.py), topic and POS tasks only
    grammar: Literal["phrase", "bigram"] = "phrase"
    words: int = 1000
    sentences: int = 20000  # training sentences per language
    test_sentences: int = 1000  # held-out sentences per language (task test sets, parallel data)
    seed: int = 0  # draws the base grammar
    languages: list[LabLanguageConfig] = Field(default_factory=lambda: [LabLanguageConfig(name="syn")])


class TargetConfig(_Strict):
    """A language the pretrained models are moved to: its corpus (its own tokenizer is trained on it)."""

    language: str
    corpus: CorpusConfig
    tokenizer: TokenizerConfig | None = None  # None = the experiment's data.tokenizer settings
    # MUSE-format source->target dictionaries for the oracle assembly (`pipeline.embeddings: [oracle]`);
    # empty = the lab's gold dictionary when the target is a lab language
    dictionary: list[str] = Field(default_factory=list)


class PipelineConfig(_Strict):
    """The relearning pipeline as one experiment: every (model, seed) is pretrained, task-adapted, and for
    every (target, budget) language-adapted, assembled and evaluated zero-shot. Stage settings are partial
    configs deep-merged onto this config (e.g. `language_adapt: {train: {steps: 300}}`)."""

    models: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"standard": {}, "forgetting": {"forgetting": {"every": 1000}}}
    )
    seeds: list[int] = Field(default_factory=lambda: [0])  # one replicate per seed: pretraining AND adaptation
    targets: list[TargetConfig] = Field(default_factory=list)
    budgets: list[int] = Field(default_factory=lambda: [5_000_000])  # adaptation tokens (first N of the corpus)
    # new-embedding draws per (model, seed, target, budget): each language adaptation re-draws the embeddings and
    # orders its data with its own seed (zero-shot varies as much with the draw as with the pretraining seed)
    draws: int = Field(1, ge=1)
    pretrain: dict[str, Any] = Field(default_factory=dict)
    language_adapt: dict[str, Any] = Field(default_factory=dict)
    task_adapt: dict[str, Any] = Field(default_factory=dict)
    pretrained: dict[str, str] = Field(default_factory=dict)  # model name -> existing run dir: skip its pretraining
    # which token embeddings the evaluate stage puts into each task-adapted body: `adapted` (relearned by
    # language adaptation, per budget) and/or `oracle` (the source embeddings through the target's gold
    # dictionary: the upper bound any relearning can reach; word-level tokenizers only)
    embeddings: list[Literal["adapted", "oracle"]] = Field(default_factory=lambda: ["adapted"])


class DictionaryConfig(_Strict):
    """A MUSE-format dictionary pair for word translation: fit a mapping on `train`, test on `test`."""

    train: str | None = None  # e.g. dict.en-fr.0-5000.txt (null: no mapping is fitted, direct retrieval only)
    test: str  # e.g. dict.en-fr.5000-6500.txt


class AnalysisConfig(_Strict):
    """Cross-lingual structure of one or two models (Conneau, Wu et al., 2020; see docs/analysis.md).

    Sides: with one model, each language of `languages` after the first is compared with the first;
    with two models, model 1 in `languages[0]` with model 2 in each language (its own language when a
    single language is given: two models on the same text)."""

    languages: list[str] = Field(default_factory=list)  # [source, target, ...]; empty = the parallel file's columns
    parallel: str | None = None  # TSV with a header naming the languages (lab parallel.*.tsv, PUD)
    parallel_files: dict[str, str] = Field(default_factory=dict)  # or: language -> line-aligned text file
    max_sentences: int = 1000
    fit_share: float = 0.5  # first share of the parallel sentences fits the Procrustes maps; the rest is evaluated
    alignment: str | None = None  # Pharaoh `i-j` file, line-aligned with the parallel sentences (source-target)
    retrieval: dict[str, list[str]] = Field(default_factory=dict)  # "src-tgt" -> [src file, tgt file] (Tatoeba)
    dictionaries: dict[str, DictionaryConfig] = Field(default_factory=dict)  # "src-tgt" -> MUSE train/test
    word_corpus: dict[str, str] = Field(default_factory=dict)  # language -> text whose occurrences average word vectors
    max_word_sentences: int = 5000
    layers: list[int] | None = None  # representation layers (0 = embeddings); null = all
    batch_size: int = 32
    seq_len: int | None = None  # null = the model's data.seq_len
    debiased: bool = False  # debiased CKA (unbiased HSIC)
    csls_k: int = 10
    every: int = 0  # during MLM training: CKA and retrieval on `parallel` every N steps (0 = off)


class CheckpointConfig(_Strict):
    every: int = 0  # 0 = only at the end (and on SIGTERM/SIGINT)
    keep: int = 3
    async_save: bool = True
    resume: bool = True


class Config(_Strict):
    name: str = "run"
    model: ModelConfig = Field(default_factory=ModelConfig)
    mesh: MeshConfig = Field(default_factory=MeshConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    lab: LabConfig | None = None
    task: TaskConfig | None = None  # set: this run fine-tunes a task head instead of masked-LM training
    pipeline: PipelineConfig | None = None  # set: `xlplastic run` runs the relearning pipeline
    analysis: AnalysisConfig | None = None  # `xlplastic analyze`, and the periodic hook during training

    def languages(self) -> list[str]:
        """The model's languages in order: `model.languages`, else the corpora's languages as they first appear."""
        if self.model.languages:
            return list(self.model.languages)
        return list(dict.fromkeys(c.language for c in self.data.corpora))

    def language_index(self, language: str | None) -> int:
        """A language's id in batches (`lang`); unknown names are errors when the model needs ids."""
        langs = self.languages()
        if language in langs:
            return langs.index(language)
        if self.model.uses_language_ids:
            raise UserError(f"language `{language}` is not one of the model's languages ({', '.join(langs)}); "
                            "expected model.languages to list it")
        return 0

    @property
    def batch_has_language(self) -> bool:
        """Whether MLM batches carry each row's language id (the model or the masking needs it)."""
        return self.model.uses_language_ids or self.data.random_within_language

    def corpus_language_ids(self):
        """int32 [num corpora]: each corpus' language id (the sampler's `lang` is a corpus index)."""
        import numpy as np

        return np.array([self.language_index(c.language) for c in self.data.corpora], dtype=np.int32)

    @model_validator(mode="after")
    def _check(self) -> "Config":
        t = self.train
        if t.batch_size % t.grad_accum:
            raise ValueError(f"train.batch_size {t.batch_size} must be divisible by train.grad_accum {t.grad_accum}")
        return self


# ----------------------------------------------------------------------------------------------
# Loading


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: malformed YAML ({getattr(e, 'problem', e)}); expected a mapping of keys")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; expected a YAML config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level is a {type(data).__name__}; expected a mapping of keys")
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "rules":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Reads a YAML config and its `base:` chain (paths relative to the including file)."""
    path = Path(path).resolve()
    if path in _seen:
        raise UserError(f"{path}: `base:` inheritance loops back to itself")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    bases = base if isinstance(base, list) else [base]
    merged: dict[str, Any] = {}
    for b in bases:
        if not isinstance(b, str):
            raise UserError(f"{path}: `base` must be a path or a list of paths, got {b!r}")
        merged = _deep_merge(merged, load_raw(path.parent / b, _seen + (path,)))
    return _deep_merge(merged, data)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`key.sub=value` overrides; values parse as YAML scalars (`3`, `1e-4`, `true`, `[a, b]`); a number
    after a list indexes it (`lab.languages.1.word_order=reverse`)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=100")
        key, value = item.split("=", 1)
        try:
            parsed = yaml_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        node = out
        parts = key.strip().split(".")
        for i, p in enumerate(parts):
            if isinstance(node, list):  # `lab.languages.1.word_order=reverse`: an element of a list by index
                if not (p.isdigit() and int(p) < len(node)):
                    raise UserError(f"--set {key}: {'.'.join(parts[:i]) or key} is a list of {len(node)}; "
                                    f"expected an index 0..{len(node) - 1} where {p!r} is")
                p = int(p)
            elif not isinstance(node, dict):
                raise UserError(f"--set {key}: {'.'.join(parts[:i])} is a value, not a section; expected a key "
                                "that exists in the config or a new one under a section")
            if i == len(parts) - 1:
                node[p] = parsed
            else:
                if isinstance(node, dict) and not isinstance(node.get(p), (dict, list)):
                    node[p] = {}
                node = node[p]
    return out


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys at a location of the schema (for 'did you mean' hints)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = cur.model_fields.get(part) if isinstance(cur, type) and issubclass(cur, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        cur = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if cur is None:
            return []
    return list(cur.model_fields) if isinstance(cur, type) and issubclass(cur, BaseModel) else []


def _apply_preset(raw: dict[str, Any]) -> dict[str, Any]:
    model = raw.get("model")
    if isinstance(model, dict) and model.get("preset") in PRESETS:
        raw = dict(raw)
        raw["model"] = {**PRESETS[model["preset"]], **model}
    return raw


def validate(raw: dict[str, Any], source: str = "<config>") -> Config:
    """Builds the typed config; the first problem becomes one line naming the key and the file."""
    try:
        return Config.model_validate(_apply_preset(raw))
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "<top level>"
        if err["type"] == "extra_forbidden":
            names = _field_names(Config, loc)
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            hint = f"; did you mean `{'.'.join(str(p) for p in loc[:-1] + (close[0],))}`?" if close else ""
            raise UserError(f"{source}: unknown config key `{key}`{hint}") from None
        got = err.get("input")
        msg = err["msg"]
        raise UserError(f"{source}: bad value for `{key}`: {msg} (got {got!r})") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    raw = apply_overrides(load_raw(path), overrides or [])
    return validate(raw, source=str(path))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
