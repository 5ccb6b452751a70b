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
    norm: Literal["post", "pre"] = "post"  # post-LN is BERT/RoBERTa; pre-LN trains more stably when deep
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
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
        return self


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
        }
    )


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
    # synthetic source: a generated class-bigram language (see xlplastic/data/synthetic.py)
    synthetic_sentences: int = 2000
    synthetic_words: int = 300
    synthetic_seed: int = 0


class TokenizerConfig(_Strict):
    """Load `path` (a tokenizer.json) or train one of `kind` on the training corpora."""

    path: str | None = None
    kind: Literal["bpe", "unigram", "wordpiece"] = "bpe"
    vocab_size: int = 8000
    lowercase: bool = False
    min_frequency: int = 2
    train_max_lines: int | None = 1_000_000


class DataConfig(_Strict):
    corpora: list[CorpusConfig] = Field(default_factory=lambda: [CorpusConfig(kind="synthetic")])
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    seq_len: int = 128
    alpha: float = 0.7  # language sampling probability ∝ share ** alpha
    eval_sequences: int = 64  # held-out packed sequences (taken from the end of each corpus)
    mask_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
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

        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown parameter group(s) {', '.join(unknown)}; expected some of {', '.join(GROUPS)}")
        if self.every < 0:
            raise ValueError(f"forgetting.every must be >= 0 (0 = off), got {self.every}")
        return self


class InitConfig(_Strict):
    """Where parameters start: freshly drawn (default) or copied from other runs' latest checkpoints.
    Assembly is this too: `groups_from: {token_embedding: <adapted run>}` over `from_run: <task run>`."""

    from_run: str | None = None  # a run directory (or its checkpoints/ folder)
    groups_from: dict[str, str] = Field(default_factory=dict)  # group -> run directory, overriding from_run
    reinit: list[str] = Field(default_factory=list)  # groups drawn fresh instead of copied (N(0, std), pad row 0)
    std: float = 0.02


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
    pooling: Literal["bos", "mean"] = "bos"  # classification: the bos state (RoBERTa) or the mean over tokens


class LabLanguageConfig(_Strict):
    """One language of the synthetic lab: the base grammar under a known transformation."""

    name: str
    permute: float = 0.0  # share of word types given new, unrelated surface forms (1.0 = no anchors)
    word_order: Literal["same", "reverse", "verb_final"] = "same"
    topics: list[float] | None = None  # topic (domain) distribution of its sentences; None = uniform
    seed: int = 1  # draws the new surface forms and this language's sentences


class LabConfig(_Strict):
    """A generated family of languages with gold structure (see xlplastic/data/lab.py)."""

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
    pretrain: dict[str, Any] = Field(default_factory=dict)
    language_adapt: dict[str, Any] = Field(default_factory=dict)
    task_adapt: dict[str, Any] = Field(default_factory=dict)
    pretrained: dict[str, str] = Field(default_factory=dict)  # model name -> existing run dir: skip its pretraining


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
    """`key.sub=value` overrides; values parse as YAML scalars (`3`, `1e-4`, `true`, `[a, b]`)."""
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
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = parsed
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
