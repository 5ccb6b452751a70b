"""Typed experiment configuration: YAML files with `base:` inheritance and dotted CLI overrides.

Config is data: one pydantic schema, strict (unknown keys and wrong types are errors that name the key
and the file), resolved once and written to the run directory so a run can be reproduced from it alone.
Everything that can be checked without reading data is checked when a config loads: types, numeric
ranges (Field constraints), parameter-group names against the model's groups, and keys that must agree
with each other. Every problem becomes one line, converted from pydantic's errors in `validate` only.
This module imports no JAX: checking a config costs milliseconds.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from xlplastic.errors import UserError
from xlplastic.groups import GROUPS, base_group, model_groups
from xlplastic.paths import as_path


class _Loader(yaml.SafeLoader):
    """Safe YAML, plus `1e-4` read as a float (YAML 1.1 would read it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?(?:\d[\d_]*)?\.\d*(?:[eE][-+]?\d+)?$"),
    list("-+0123456789."),
)


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A key given twice in one mapping is an error (YAML would keep the last silently: a second `train:`
    section would drop the first one's settings)."""
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` merges keys that this mapping's own keys may override
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)):
            continue  # (an unhashable key is YAML's own error)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key `{key}` (YAML would keep only the last)", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.construct_mapping = _mapping_without_duplicates  # type: ignore[method-assign]


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


# Numeric ranges, named once (pydantic reports a violation with the key, the value and the bound).
PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]  # a probability or a share
DropRate = Annotated[float, Field(ge=0, lt=1)]


class SeparateConfig(_Strict):
    """Language-specific copies of parameters ("Sep" in Conneau, Wu et al., 2020): each language of
    `model.languages` gets its own token embeddings (hence its own tied softmax), position embeddings
    and bottom `layers` transformer layers; every other parameter is shared."""

    embeddings: bool = False  # token embeddings (and the tied output projection) per language
    positions: bool | None = None  # position embeddings per language; None = as `embeddings` (the paper's Sep Emb)
    layers: NonNegInt = 0  # the bottom N transformer layers per language (Sep L1-N)
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
    vocab_size: PosInt | None = None
    hidden_size: PosInt = 256
    num_layers: PosInt = 4
    num_heads: PosInt = 4
    mlp_dim: PosInt = 1024
    max_positions: PosInt = 514  # positions 0..max_positions-1, no offset: sequences up to max_positions tokens
    # > 0 (RoBERTa/XLM-R imported from HF: padding_idx + 1): token i reads position row offset + i and
    # padding reads row offset - 1, so sequences are up to max_positions - offset tokens; 0 = no offset
    position_offset: NonNegInt = 0
    type_vocab_size: NonNegInt = 0  # 0 = no token-type embedding (RoBERTa/XLM-R), 2 = BERT
    num_languages: NonNegInt = 0  # 0 = no language embedding (XLM-style when > 0)
    # The model's languages in order: a batch's `lang` ids index this list (corpora of other names are an
    # error). Needed by `separate`; empty = the corpora's order.
    languages: list[str] = Field(default_factory=list)
    separate: SeparateConfig = Field(default_factory=SeparateConfig)
    norm: Literal["post", "pre"] = "post"  # post-LN is BERT/RoBERTa; pre-LN trains more stably when deep
    dropout: DropRate = 0.1
    attention_dropout: DropRate = 0.1
    layer_norm_eps: float = Field(1e-5, gt=0)
    init_std: float = Field(0.02, gt=0)
    # > 0: a learned attention-score bias per head and relative offset j - i, clipped to +-this (T5; part of
    # the body group). Not in BERT/RoBERTa: an inductive bias for small lab models, which otherwise spend
    # thousands of steps on a plateau before attention finds the neighbouring words
    relative_attention: NonNegInt = 0
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; parameters stay param_dtype
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    # `block`: each transformer block rematerialised in the backward pass; `dots`: its weight matmuls' outputs
    # kept, the rest (attention scores, softmax, GELU, norms) recomputed (model.REMAT_POLICIES)
    remat: Literal["none", "block", "dots"] = "none"
    # true: the shared layers' parameters are stacked on a leading `layers` axis and run by one lax.scan, so
    # compile time does not grow with depth (same function and same initial draws as unrolled; docs/config.md)
    scan_layers: bool = False
    attention_impl: Literal["xla", "cudnn"] | None = None  # None lets JAX pick (cuDNN flash on GPU)

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model.hidden_size {self.hidden_size} must be divisible by model.num_heads "
                             f"{self.num_heads}; expected a multiple of {self.num_heads}")
        bad = [l for l in self.languages if not re.fullmatch(r"[A-Za-z0-9_]+", l)]
        if bad or len(set(self.languages)) != len(self.languages):
            raise ValueError(f"model.languages {self.languages}: expected distinct names of letters, digits or _")
        if self.separate.any and len(self.languages) < 2:
            raise ValueError("model.separate parameters need model.languages to list at least two languages")
        if not 0 <= self.separate.layers <= self.num_layers:
            raise ValueError(f"model.separate.layers is {self.separate.layers}; expected 0..model.num_layers "
                             f"({self.num_layers})")
        if self.position_offset >= self.max_positions:
            raise ValueError(f"model.position_offset {self.position_offset} leaves no position of model.max_positions "
                             f"{self.max_positions}; expected an offset below max_positions")
        if self.position_offset and self.separate.position_copies:
            raise ValueError("model.position_offset (imported RoBERTa positions) with language-specific position "
                             "embeddings (model.separate); expected one of them")
        if self.num_languages and self.languages and self.num_languages != len(self.languages):
            raise ValueError(f"model.num_languages {self.num_languages} but {len(self.languages)} model.languages are "
                             "listed; expected equal")
        return self

    @property
    def uses_language_ids(self) -> bool:
        """Whether the forward pass needs each row's language (language embeddings or separate copies)."""
        return bool(self.num_languages) or self.separate.any


# base and large scan their layers: compile time 3.7x (12 layers) and 5x (24 layers) shorter for a TPU slice
# (docs/benchmarks.md, "Scanned vs unrolled"); a config can still set scan_layers: false
PRESETS: dict[str, dict[str, int | bool]] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, mlp_dim=128),
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, mlp_dim=1024),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, scan_layers=True),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096, scan_layers=True),
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
    rate: Share = 0.3
    max_share: Share = 0.15
    block_words: PosInt = 4096
    seed: NonNegInt = 0


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
    max_tokens: PosInt | None = None
    max_lines: PosInt | None = None
    code_switch: CodeSwitchConfig | None = None  # MLM training text only (tokenizers see the original)
    # synthetic source: a generated class-bigram language (see xlplastic/data/synthetic.py)
    synthetic_sentences: PosInt = 2000
    synthetic_words: PosInt = 300
    synthetic_seed: NonNegInt = 0

    @model_validator(mode="after")
    def _check(self) -> "CorpusConfig":
        if self.kind in ("text", "jsonl") and not self.path:
            raise ValueError(f"kind `{self.kind}` needs `path` (a file or folder); expected path to be set")
        if self.kind == "hf" and not (self.path or self.name):
            raise ValueError("kind `hf` needs `path` (local data files) or `name` (a hub dataset); expected one of them")
        if self.kind == "tfds" and not self.name:
            raise ValueError("kind `tfds` needs `name` (a TFDS dataset name); expected name to be set")
        return self


class TokenizerConfig(_Strict):
    """Load `path` (a tokenizer.json) or train one of `kind` on the training corpora."""

    path: str | None = None
    kind: Literal["bpe", "unigram", "wordpiece", "wordlevel"] = "bpe"
    vocab_size: PosInt = 8000
    lowercase: bool = False
    min_frequency: NonNegInt = 2
    train_max_lines: PosInt | None = 1_000_000
    # Multilingual layouts (Conneau, Wu et al., 2020; see xlplastic/data/vocabulary.py): one tokenizer per
    # language (`vocab_size` each) instead of a joint one, and whether languages share ids (anchors).
    per_language: bool = False
    anchors: Literal["shared", "none"] = "shared"


class DataConfig(_Strict):
    corpora: list[CorpusConfig] = Field(default_factory=lambda: [CorpusConfig(kind="synthetic")], min_length=1)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    seq_len: int = Field(128, ge=2)  # <s> and </s> included
    alpha: NonNegFloat = 0.7  # language sampling probability ∝ share ** alpha
    eval_sequences: PosInt = 64  # held-out packed sequences (taken from the end of each corpus)
    mask_prob: float = Field(0.15, gt=0, lt=1)
    mask_token_prob: Share = 0.8
    random_token_prob: Share = 0.1
    random_within_language: bool = False  # random replacements drawn from the row's language's own tokens
    cache_dir: str | None = None  # tokenized/packed corpus cache; default <run_dir>/data_cache
    data_dir: str | None = None  # root for relative corpus paths (e.g. ../shared/data)
    # packing segments (data/segments.py): rows are packed per segment, so they do not depend on how many
    # processes pack them; a file is cut every segment_bytes, any other source every segment_docs documents
    segment_bytes: PosInt = 64 << 20
    segment_docs: PosInt = 65536

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.mask_token_prob + self.random_token_prob > 1:
            raise ValueError(f"data.mask_token_prob {self.mask_token_prob} + data.random_token_prob "
                             f"{self.random_token_prob} exceed 1; expected shares of the masked tokens that sum to "
                             "at most 1 (the rest stay unchanged)")
        return self


class OptimizerConfig(_Strict):
    lr: NonNegFloat = 5e-4
    b1: float = Field(0.9, ge=0, lt=1)
    b2: float = Field(0.98, ge=0, lt=1)
    eps: float = Field(1e-6, gt=0)  # > 0: a leaf whose gradient is always zero (the pad row) would be 0/0
    weight_decay: NonNegFloat = 0.01
    clip_norm: float | None = Field(None, gt=0)  # global-norm clipping; None = off


class ScheduleConfig(_Strict):
    kind: Literal["linear", "polynomial", "inverse_sqrt", "cosine", "constant"] = "linear"
    warmup_steps: NonNegInt = 0
    end_lr: NonNegFloat = 0.0
    power: float = Field(1.0, gt=0)  # polynomial decay power


class TrainConfig(_Strict):
    steps: NonNegInt = 100  # 0 only in a task run (evaluate only); masked-LM training needs >= 1
    trainable: list[str] | None = None  # parameter groups that train (see groups.py); None = all of them
    seed: NonNegInt = 0
    batch_size: PosInt = 32  # global batch, in sequences
    grad_accum: PosInt = 1
    steps_per_call: PosInt = 1  # train steps per jitted call (the same result, less per-call work)
    # XLA DebugOptions the train/eval steps compile with (e.g. train.CPU_ONEDNN_OPTIONS); None = XLA's defaults
    compiler_options: dict[str, str | bool | int | float] | None = None
    log_every: PosInt = 1
    eval_every: NonNegInt = 0  # 0 = only at the end
    eval_batches: PosInt = 4
    progress: bool = True
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)


class ForgettingConfig(_Strict):
    """Active forgetting (Chen et al., 2023): re-draw `groups` after every update whose count is a
    multiple of `every`, restart their optimizer state, and give them an LR schedule per episode."""

    every: NonNegInt = 0  # K; 0 = off
    groups: list[str] = Field(default_factory=lambda: ["token_embedding"])  # checked against the model: Config
    start: NonNegInt = 0  # no reset before this step
    stop: NonNegInt | None = None  # no reset after this step (None = until the end; never at the final step)
    init: Literal["normal", "matrix_stats"] = "normal"  # N(0, std), or N(mean, std) of the matrix being reset
    std: NonNegFloat = 0.02
    lr: NonNegFloat | None = None  # peak LR of the reset groups in each episode; None = train.optimizer.lr
    warmup_steps: NonNegInt | None = None  # per episode; None = the run's warm-up compressed by steps/every
    end_lr: NonNegFloat = 0.0  # the episode's linear decay ends here

    @model_validator(mode="after")
    def _check(self) -> "ForgettingConfig":
        if self.every and not self.groups:
            raise ValueError(f"forgetting.every is {self.every} but forgetting.groups is empty; expected the groups "
                             "to reset (or every: 0 = off)")
        if self.every and self.stop is not None and self.stop < self.start:
            raise ValueError(f"forgetting.stop {self.stop} is before forgetting.start {self.start}: no reset would "
                             "happen; expected stop >= start")
        return self


class MapEmbeddingsConfig(_Strict):
    """Token embeddings (and every other vocabulary-sized leaf) of this run's vocabulary gathered from
    another run's through a word dictionary: row t is the row of the source word that the dictionary
    gives for token t. With a gold dictionary this is the oracle assembly of the lab; both tokenizers
    must be word-level (one token per word), since only then do tokens correspond one to one."""

    dictionaries: list[str] = Field(min_length=1)  # MUSE-format files `source target` (relative to data.data_dir); the first pair of a word wins
    from_run: str | None = None  # whose embeddings (and tokenizer) are mapped; None = init.from_run


class InitConfig(_Strict):
    """Where parameters start: freshly drawn (default) or copied from other runs' latest checkpoints.
    Assembly is this too: `groups_from: {token_embedding: <adapted run>}` over `from_run: <task run>`."""

    from_run: str | None = None  # a run directory (or its checkpoints/ folder)
    groups_from: dict[str, str] = Field(default_factory=dict)  # group -> run directory, overriding from_run
    reinit: list[str] = Field(default_factory=list)  # groups drawn fresh instead of copied (N(0, std), pad row 0)
    std: NonNegFloat = 0.02
    map_embeddings: MapEmbeddingsConfig | None = None  # token embeddings through a word dictionary (the oracle)
    # a local Hugging Face model folder (BERT / RoBERTa / XLM-R: config.json, weights, tokenizer.json) as the
    # base instead of from_run: it sets the model's architecture and, unless data.tokenizer.path is set, the
    # tokenizer (docs/hf.md). `hf:DIR` is accepted wherever a run directory is (from_run, groups_from).
    from_hf: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "InitConfig":
        if self.from_hf is not None and self.from_run is not None:
            raise ValueError("init.from_hf and init.from_run both name the base model; expected one of them")
        if self.from_hf is not None and not self.from_hf.strip():
            raise ValueError("init.from_hf is empty; expected a Hugging Face model folder")
        return self

    @property
    def base(self) -> str | None:
        """Where groups not named in groups_from come from: from_run, or `hf:<from_hf>`."""
        return self.from_run if self.from_hf is None else f"hf:{self.from_hf}"


HF_TASK_KEYS = ("name", "subset", "split", "data_files")


class TaskConfig(_Strict):
    """A downstream task: fine-tuned on `train` (source language), scored on each `test` language."""

    name: str = "classification"  # the task's name in results; null or absent = `kind`
    kind: Literal["classification", "pos", "ner", "parsing", "qa"] = "classification"
    train: str | None = None  # file in a format of xlplastic/tasks/readers.py (relative to data.data_dir)
    hf: dict[str, Any] | None = None  # instead of `train`: {name, subset, split, data_files} for HF `datasets`
    dev: str | None = None  # source-language dev file (model selection / the source score)
    test: dict[str, str] = Field(default_factory=dict)  # language -> test file (zero-shot evaluation)
    language: str | None = None  # keep rows of this language (original multi-language XNLI files)
    max_train_examples: PosInt | None = None
    max_eval_examples: PosInt | None = None
    seq_len: int = Field(128, ge=2)  # special tokens included
    doc_stride: PosInt = 128  # QA: sliding-window stride over long contexts
    max_query_len: PosInt = 64
    max_answer_len: PosInt = 30
    punct: Literal["include", "exclude"] = "include"  # parsing: score punctuation (CoNLL 2018) or not
    # classification: the bos state (RoBERTa), the mean over tokens, or for sentence pairs each sentence's
    # mean combined as [u, v, |u-v|, u*v] (InferSent / Sentence-BERT)
    pooling: Literal["bos", "mean", "pair"] = "bos"

    @model_validator(mode="before")
    @classmethod
    def _name_is_kind(cls, data: Any) -> Any:
        """An unnamed task is called by its kind (not by any one data set's name)."""
        if isinstance(data, dict) and data.get("name") is None:
            kind = data.get("kind", "classification")
            data = {**data, "name": kind if isinstance(kind, str) else "classification"}
        return data

    @model_validator(mode="after")
    def _check(self) -> "TaskConfig":
        if self.hf is not None:
            unknown = sorted(set(self.hf) - set(HF_TASK_KEYS))
            if unknown:
                raise ValueError(f"task.hf has unknown key(s) {', '.join(unknown)}; expected some of {', '.join(HF_TASK_KEYS)}")
            if not isinstance(self.hf.get("name"), str) or not self.hf["name"]:
                raise ValueError(f"task.hf needs `name` (a Hugging Face dataset), got {self.hf.get('name')!r}")
        return self


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


_FOLDER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


class PipelineConfig(_Strict):
    """The relearning pipeline as one experiment: every (model, seed) is pretrained, task-adapted, and for
    every (target, budget) language-adapted, assembled and evaluated zero-shot. Stage settings are partial
    configs deep-merged onto this config (e.g. `language_adapt: {train: {steps: 300}}`)."""

    models: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"standard": {}, "forgetting": {"forgetting": {"every": 1000}}}
    )
    seeds: list[NonNegInt] = Field(default_factory=lambda: [0], min_length=1)  # one replicate per seed: pretraining AND adaptation
    targets: list[TargetConfig] = Field(default_factory=list)
    budgets: list[PosInt] = Field(default_factory=lambda: [5_000_000])  # adaptation tokens (first N of the corpus)
    # new-embedding draws per (model, seed, target, budget): each language adaptation re-draws the embeddings and
    # orders its data with its own seed (zero-shot varies as much with the draw as with the pretraining seed)
    draws: int = Field(1, ge=1)
    pretrain: dict[str, Any] = Field(default_factory=dict)
    language_adapt: dict[str, Any] = Field(default_factory=dict)
    task_adapt: dict[str, Any] = Field(default_factory=dict)
    # model name -> existing run dir: skip its pretraining; `{seed}` in the path is each seed's own run
    # (e.g. another sweep's `runs/x/pretrain/forgetting-s{seed}`), without it every seed adapts the same run
    pretrained: dict[str, str] = Field(default_factory=dict)
    # which token embeddings the evaluate stage puts into each task-adapted body: `adapted` (relearned by
    # language adaptation, per budget) and/or `oracle` (the source embeddings through the target's gold
    # dictionary: the upper bound any relearning can reach; word-level tokenizers only)
    embeddings: list[Literal["adapted", "oracle"]] = Field(default_factory=lambda: ["adapted"], min_length=1)
    # language -> CoNLL-U files whose UPOS tags say each word's class: the token embeddings of every pretrained
    # and language-adapted model are scored on how much of their geometry is those classes (class_r2,
    # class_1nn; analysis/class_structure.py). Empty: each lab language's own tagged files
    word_classes: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "PipelineConfig":
        if not self.models:
            raise ValueError("pipeline.models is empty; expected at least one model (name -> partial config)")
        for key, names in (("models", list(self.models)), ("targets[].language", [t.language for t in self.targets])):
            bad = [n for n in names if not _FOLDER_NAME.fullmatch(n)]
            if bad:
                raise ValueError(f"pipeline.{key}: {bad[0]!r} names stage folders; expected letters, digits, _ . + or - "
                                 "(not starting with . + or -)")
        for key, values in (("seeds", self.seeds), ("budgets", self.budgets),
                            ("targets", [t.language for t in self.targets])):
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"pipeline.{key} lists {', '.join(twice)} more than once; expected distinct entries "
                                 "(each names a stage folder)")
        for m, src in self.pretrained.items():
            rest = src.replace("{seed}", "")
            if "{" in rest or "}" in rest:
                raise ValueError(f"pipeline.pretrained.{m} is {src!r}; expected a run directory, with `{{seed}}` as the "
                                 "only placeholder (each seed's run)")
        extra = sorted(set(self.pretrained) - set(self.models))
        if extra:
            raise ValueError(f"pipeline.pretrained names {', '.join(extra)}, not a model of pipeline.models; expected "
                             f"some of {', '.join(self.models)}")
        if self.targets and "adapted" in self.embeddings and not self.budgets:
            raise ValueError("pipeline.budgets is empty; expected at least one language-adaptation budget (tokens)")
        return self


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
    max_sentences: PosInt = 1000
    fit_share: float = Field(0.5, gt=0, lt=1)  # first share of the parallel sentences fits the Procrustes maps; the rest is evaluated
    alignment: str | None = None  # Pharaoh `i-j` file, line-aligned with the parallel sentences (source-target)
    retrieval: dict[str, list[str]] = Field(default_factory=dict)  # "src-tgt" -> [src file, tgt file] (Tatoeba)
    dictionaries: dict[str, DictionaryConfig] = Field(default_factory=dict)  # "src-tgt" -> MUSE train/test
    word_corpus: dict[str, str] = Field(default_factory=dict)  # language -> text whose occurrences average word vectors
    max_word_sentences: PosInt = 5000
    # what word translation searches: the dictionary's target words (default), or every word type of the
    # word corpus, as MUSE searches the full embedding vocabulary (harder: more distractors)
    translation_candidates: Literal["dictionary", "vocabulary"] = "dictionary"
    layers: list[NonNegInt] | None = None  # representation layers (0 = embeddings); null = all
    batch_size: PosInt = 32
    seq_len: int | None = Field(None, ge=2)  # null = the model's data.seq_len
    debiased: bool = False  # debiased CKA (unbiased HSIC)
    csls_k: PosInt = 10
    every: NonNegInt = 0  # during MLM training: CKA and retrieval on `parallel` every N steps (0 = off)


class CheckpointConfig(_Strict):
    every: NonNegInt = 0  # 0 = only at the end (and on SIGTERM/SIGINT)
    keep: PosInt = 3  # the last N checkpoints (at least the latest: resuming needs it)
    async_save: bool = True
    resume: bool = True


class Config(_Strict):
    name: str = "run"  # names the default run directory runs/<name>
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
    def _check(self, info: ValidationInfo) -> "Config":
        """Keys that must agree with each other. With the `run` context (`validate(..., run=True)`, what
        `load_config` and the pipeline's stages use) also what only a config that is run as it stands
        needs: sequence lengths within the model's positions, at least one step of masked-LM training."""
        t, m = self.train, self.model
        if not self.name or "/" in self.name or "\\" in self.name or self.name in (".", ".."):
            raise ValueError(f"name {self.name!r} names the run folder (runs/<name>); expected a name without / or \\")
        if t.batch_size % t.grad_accum:
            raise ValueError(f"train.batch_size {t.batch_size} must be divisible by train.grad_accum {t.grad_accum}")
        sizes = {"data": self.mesh.data, "fsdp": self.mesh.fsdp, "tensor": self.mesh.tensor}
        bad = {k: v for k, v in sizes.items() if v == 0 or v < -1}
        if bad:
            k, v = next(iter(bad.items()))
            raise ValueError(f"mesh.{k} is {v}; expected a positive size or -1 (all remaining devices)")
        if sum(v == -1 for v in sizes.values()) > 1:
            raise ValueError(f"mesh: {', '.join(f'{k}={v}' for k, v in sizes.items())} has more than one -1; expected "
                             "at most one axis to take the remaining devices")
        for logical, axes in self.mesh.rules.items():
            wrong = [a for a in axes if a not in sizes]
            if wrong:
                raise ValueError(f"mesh.rules.{logical} names mesh axis {', '.join(map(repr, wrong))}; expected some "
                                 "of data, fsdp, tensor")
        self._check_groups()
        if self.pipeline is not None:
            if self.task is None:
                raise ValueError("pipeline needs a `task:` section (the source-language task to adapt and evaluate)")
            missing = sorted({tg.language for tg in self.pipeline.targets} - set(self.task.test))
            if missing:
                raise ValueError(f"task.test has no test set for pipeline target(s) {', '.join(missing)}; expected "
                                 "one per target language")
        if self.init.map_embeddings is not None and not (self.init.map_embeddings.from_run or self.init.base):
            raise ValueError("init.map_embeddings needs a run to map from; expected init.map_embeddings.from_run or "
                             "init.from_run")
        if (info.context or {}).get("run"):
            mlm = self.task is None or self.pipeline is not None  # a pipeline's pretraining is masked LM
            if self.task is None and t.steps < 1:
                raise ValueError(f"train.steps is {t.steps}; expected >= 1 for masked-LM training "
                                 "(0 = evaluate only, in a task run)")
            lengths = [("data.seq_len", self.data.seq_len)] if mlm else []
            if self.task is not None:
                lengths.append(("task.seq_len", self.task.seq_len))
            if self.analysis is not None:
                lengths.append(("analysis.seq_len" if self.analysis.seq_len else "data.seq_len (analysis)",
                                self.analysis.seq_len or self.data.seq_len))
            usable = m.max_positions - m.position_offset
            for key, n in lengths:
                if n > usable:
                    off = f" from row {m.position_offset}" if m.position_offset else ""
                    raise ValueError(f"{key} {n} exceeds model.max_positions {m.max_positions} (positions 0.."
                                     f"{m.max_positions - 1}{off}, special tokens included); expected at most "
                                     f"{usable}")
        return self

    def _check_groups(self) -> None:
        """Every field naming parameter groups names groups of THIS model (see groups.model_groups)."""
        task = self.task is not None
        has = model_groups(self.model, task=task)

        def refuse(field: str, name: str) -> None:
            valid = f"expected some of {', '.join(has)}"
            if base_group(name) not in GROUPS or "@" in name:
                raise ValueError(f"{field} names unknown parameter group `{name}`; {valid}")
            why = "a masked-LM run has no task head" if name == "task_head" else "this model has no such parameters"
            raise ValueError(f"{field} names parameter group `{name}`, but {why}; {valid}")

        for field, names in (("init.reinit", self.init.reinit), ("init.groups_from", list(self.init.groups_from)),
                             ("forgetting.groups", self.forgetting.groups if self.forgetting.every else [])):
            for name in names:
                if name not in has:
                    refuse(field, name)
        for name in self.forgetting.groups:  # forgetting off: only misspellings (resets nothing either way)
            if base_group(name) not in GROUPS:
                refuse("forgetting.groups", name)
        if self.train.trainable is not None:
            # a known group the model lacks is allowed here (a task run's default list names
            # language_embedding whether or not the model has one), but not a misspelt one or a missing copy
            for name in self.train.trainable:
                if name not in has and (name not in GROUPS):
                    refuse("train.trainable", name)
            if self.train.steps > 0 and not any(name in has for name in self.train.trainable):
                raise ValueError(f"train.trainable {self.train.trainable} selects no parameter of this model; "
                                 f"expected some of {', '.join(has)} (null = all)")


# ----------------------------------------------------------------------------------------------
# Loading


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected a YAML config file")
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
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e}); expected a readable YAML config file")
    if data is None:
        raise UserError(f"{path}: empty config file; expected a mapping of keys (e.g. `base: other.yaml` and "
                        "the keys it changes)")
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level is a {type(data).__name__}; expected a mapping of keys")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """Mappings merge key by key; a mapping with `_replace: true` replaces the base's instead (e.g. a
    derived config's own `pipeline.models`). Lists and values replace."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and v.get("_replace") is True:
            out[k] = deep_merge({}, {kk: vv for kk, vv in v.items() if kk != "_replace"})
        elif isinstance(v, dict) and isinstance(out.get(k), dict) and k != "rules":
            out[k] = deep_merge(out[k], v)
        elif isinstance(v, dict):
            out[k] = deep_merge({}, v)  # (a nested `_replace` marker has nothing to replace: dropped)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Reads a YAML config and its `base:` chain (paths relative to the including file; a `gs://`
    config, e.g. a stage's of a run in a bucket, too)."""
    path = as_path(path, resolve=True)
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen[_seen.index(path):], path))
        raise UserError(f"{path}: `base:` inheritance loops back to itself ({chain}); expected a chain that ends")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return deep_merge({}, data)
    bases = base if isinstance(base, list) else [base]
    merged: dict[str, Any] = {}
    for b in bases:
        if not isinstance(b, str) or not b:
            raise UserError(f"{path}: `base` must be a path or a list of paths, got {b!r}")
        target = path.parent / b
        if not target.exists():
            raise UserError(f"{path}: `base: {b}` not found ({target.resolve()}); expected a YAML config file")
        merged = deep_merge(merged, load_raw(target, _seen + (path,)))
    return deep_merge(merged, data)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`key.sub=value` overrides; values parse as YAML scalars (`3`, `1e-4`, `true`, `[a, b]`); a number
    after a list indexes it (`lab.languages.1.word_order=reverse`). Errors name `--set KEY=VALUE`."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=100")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise UserError(f"--set {item}: the key `{key}` has an empty part; expected KEY=VALUE with a dotted key, "
                            "e.g. train.steps=100")
        try:
            parsed = yaml_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        node = out
        for i, p in enumerate(parts):
            if isinstance(node, list):  # `lab.languages.1.word_order=reverse`: an element of a list by index
                if not (p.isdigit() and int(p) < len(node)):
                    raise UserError(f"--set {item}: {'.'.join(parts[:i]) or key} is a list of {len(node)}; "
                                    f"expected an index 0..{len(node) - 1} where {p!r} is")
                p = int(p)
            elif not isinstance(node, dict):
                raise UserError(f"--set {item}: {'.'.join(parts[:i])} is a value, not a section; expected a key "
                                "that exists in the config or a new one under a section")
            if i == len(parts) - 1:
                node[p] = parsed
            else:
                if isinstance(node, dict) and not isinstance(node.get(p), (dict, list)):
                    node[p] = {}
                node = node[p]
    return out


def _annotation_model(ann: Any) -> type[BaseModel] | None:
    """The config class a field holds (directly, optionally, or as a list's or a mapping's values)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in getattr(ann, "__args__", ()):
        if (found := _annotation_model(a)) is not None:
            return found
    return None


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys at a location of the schema (for 'did you mean' hints)."""
    cur: Any = model
    skip = False  # the next part is a list index or a mapping key
    for part in loc[:-1]:
        if skip or isinstance(part, int):
            skip = False
            continue
        field = cur.model_fields.get(part) if isinstance(cur, type) and issubclass(cur, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        cur = _annotation_model(ann)
        if cur is None:
            return []
        skip = "list[" in str(ann) or "dict[" in str(ann)
    return list(cur.model_fields) if isinstance(cur, type) and issubclass(cur, BaseModel) else []


def _apply_preset(raw: dict[str, Any]) -> dict[str, Any]:
    model = raw.get("model")
    if isinstance(model, dict) and model.get("preset") in PRESETS:
        raw = dict(raw)
        raw["model"] = {**PRESETS[model["preset"]], **model}
    return raw


_UNION_TAG = re.compile(r"^(str|int|float|bool|none)$|\[")  # pydantic's union-member parts of a location


def _key_loc(loc: tuple) -> tuple:
    """An error's location in config keys (without pydantic's union-member tags)."""
    return tuple(p for p in loc if isinstance(p, int) or not _UNION_TAG.search(str(p)))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# who set the key at an error's location: (location in keys, pydantic error) -> (source, key prefix) or None
Blame = Callable[[tuple, dict], "tuple[str, str] | None"]


def _error_line(err: dict, source: str, prefix: str = "") -> str:
    """One line for pydantic's first error: the dotted key (under `prefix`), the bad value, what was expected."""
    loc = _key_loc(tuple(err["loc"]))
    dotted = ".".join(str(p) for p in loc)
    key = prefix + dotted if dotted else prefix.rstrip(".") or "<top level>"
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        names = _field_names(Config, loc)
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f"; did you mean `{prefix}{'.'.join(str(p) for p in loc[:-1] + (close[0],))}`?" if close else ""
        return f"{source}: unknown config key `{key}`{hint}"
    if kind == "missing":
        return f"{source}: missing required key `{key}`"
    if kind == "value_error":  # the schema's own checks: their messages name the keys they compare
        msg = msg.removeprefix("Value error, ")
        if dotted and dotted not in msg:
            return f"{source}: in `{key}`: {msg}"
        return f"{source}: in `{prefix.rstrip('.')}`: {msg}" if prefix else f"{source}: {msg}"
    got = _short(err.get("input"))
    if msg.startswith("Input should be "):
        return f"{source}: bad value for `{key}`: got {got}; expected {msg.removeprefix('Input should be ')}"
    return f"{source}: bad value for `{key}`: {msg} (got {got})"


def _first_error(raw: dict[str, Any], run: bool) -> dict | None:
    try:
        Config.model_validate(_apply_preset(raw), context={"run": run})
    except ValidationError as e:
        return e.errors()[0]
    return None


def validate(raw: dict[str, Any], source: str = "<config>", *, run: bool = False, blame: Blame | None = None) -> Config:
    """Builds the typed config; the first problem becomes one line naming the key and the file (or, where
    `blame` knows who set the key, that source and the key under its prefix). The one place pydantic's
    errors become UserErrors. `run=True` adds the checks of a config that is run as it stands (see
    `Config._check`); `load_config` and the pipeline's stages use it."""
    try:
        return Config.model_validate(_apply_preset(raw), context={"run": run})
    except ValidationError as e:
        err = e.errors()[0]
        found = blame(_key_loc(tuple(err["loc"])), err) if blame is not None else None
        src, prefix = found if found is not None else (source, "")
        raise UserError(_error_line(err, src, prefix)) from None


def _sets(partial: Any, loc: tuple) -> bool:
    """Whether a partial config sets the value at `loc` (or a section or list holding it)."""
    node = partial
    for part in loc:
        if not isinstance(node, dict):
            return True  # a list (merges replace lists whole) or a value where a section belongs: all of it is theirs
        if part not in node and str(part) not in node:
            return False
        node = node[part] if part in node else node[str(part)]
    return True


def validate_partials(base: dict[str, Any], *partials: dict[str, Any] | tuple[str, dict[str, Any]],
                      source: str, run: bool = True) -> Config:
    """`base` with `partials` deep-merged on in order, validated (how the pipeline builds a stage's config).
    A partial given as (label, mapping), e.g. ("pipeline.language_adapt", {...}), is named in errors in
    the keys it sets: `pipeline.language_adapt.train.stpes`, not `train.stpes`."""
    raw, labelled = base, []
    for p in partials:
        label, mapping = p if isinstance(p, tuple) else (None, p)
        raw = deep_merge(raw, mapping)
        labelled.append((label, mapping))

    def blame(loc: tuple, err: dict) -> tuple[str, str] | None:
        if not loc:
            return None
        for label, mapping in reversed(labelled):
            if _sets(mapping, loc):
                return (source, f"{label}.") if label else None
        return None

    return validate(raw, source=source, run=run, blame=blame)


def load_config(path: str | Path, overrides: list[str] | None = None, *, run: bool = True) -> Config:
    """A config file, its `base:` chain and `--set` overrides, validated completely (`run=False` leaves out
    the checks that only a config run as it stands needs). An error in a key that an override set names
    `--set KEY=VALUE` instead of the file."""
    overrides = list(overrides or [])
    raw0 = load_raw(path)
    raw = apply_overrides(raw0, overrides)
    keys = [(item, tuple(item.split("=", 1)[0].strip().split("."))) for item in overrides]

    def blame(loc: tuple, err: dict) -> tuple[str, str] | None:
        at = tuple(str(p) for p in loc)
        for item, key in reversed(keys):  # the override that set this key, or a section or list holding it
            if at[:len(key)] == key:
                return f"--set {item}", ""
        if any(key[:len(at)] == at for _, key in keys):  # a check over a section that overrides change:
            for k in range(len(overrides) + 1):  # whoever first makes it fail, the file (k = 0) or an override
                e = _first_error(apply_overrides(raw0, overrides[:k]), run)
                if e is not None and (e["loc"], e["msg"]) == (err["loc"], err["msg"]):
                    return (str(path), "") if k == 0 else (f"--set {overrides[k - 1]}", "")
        return None

    return validate(raw, source=str(path), run=run, blame=blame)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
