"""The tokenizer of a run folder: loaded from `data.tokenizer.path`, found in the folder, or trained
once (process 0) and recorded there with the settings it was trained with."""

from __future__ import annotations

import json
from pathlib import Path

from xlplastic.config import Config
from xlplastic.data.sources import iter_texts
from xlplastic.data.tokenizers import load_tokenizer, round_robin, train_tokenizer
from xlplastic.data.vocabulary import FILENAME as VOCABULARY_FILE
from xlplastic.data.vocabulary import Vocabulary
from xlplastic.errors import UserError
from xlplastic.paths import as_path
from xlplastic.runtime import barrier, is_main, write_json, write_text


def prepare_tokenizer(cfg: Config, run_dir: Path):
    """Loads `data.tokenizer.path`, else the run's own tokenizer.json / vocabulary.json, else trains it
    (process 0 writes): one tokenizer, or with `per_language` / `anchors: none` a multilingual layout."""
    tcfg = cfg.data.tokenizer
    multi = tcfg.per_language or tcfg.anchors == "none"
    own = run_dir / (VOCABULARY_FILE if multi else "tokenizer.json")
    if tcfg.path:
        path = as_path(tcfg.path)
        if not path.is_absolute() and cfg.data.data_dir and not path.exists():
            path = as_path(cfg.data.data_dir) / path
        tok = load_tokenizer(path)
        if is_main() and not multi and hasattr(tok, "save") and not own.exists():  # the run folder is a record
            write_text(own, tok.to_str(pretty=True))  # what Tokenizer.save writes, byte for byte
        return tok
    # The settings it was trained with, so a rerun that asks for another tokenizer fails instead of
    # silently resuming with the old one (written before tokenizer.json: that file's presence implies it).
    settings_path = run_dir / "tokenizer.settings.json"
    settings = {k: v for k, v in tcfg.model_dump(mode="json").items() if k != "path"}
    if is_main() and not own.exists():
        write_json(settings_path, settings)
        if multi:
            _train_vocabulary(cfg, run_dir)
        else:
            texts = (t for c in cfg.data.corpora for t in iter_texts(c, cfg.data.data_dir))
            tok = train_tokenizer(texts, tcfg)
            write_text(own, tok.to_str(pretty=True))
    barrier("tokenizer")  # every process, always: whether the file exists yet depends on timing
    if settings_path.is_file():
        found = json.loads(settings_path.read_text(encoding="utf-8"))
        for k, v in settings.items():
            if k in found and found[k] != v:
                raise UserError(
                    f"{own}: this run's tokenizer was trained with data.tokenizer.{k}={found[k]!r} but the config asks "
                    f"for {v!r}; expected the same tokenizer settings to resume this run (or a new --run-dir)"
                )
    return load_tokenizer(own)


def _train_vocabulary(cfg: Config, run_dir: Path) -> None:
    """Per-language tokenizers (each on its own language's corpora) or one joint tokenizer, laid out
    as `data.tokenizer.anchors` says, saved as vocabulary.json + tokenizer.<lang>.json."""
    tcfg, dd = cfg.data.tokenizer, cfg.data.data_dir
    langs = cfg.languages()
    bare = [l for l in langs if not any(c.language == l for c in cfg.data.corpora)]
    if bare and tcfg.per_language:
        raise UserError(f"data.tokenizer.per_language: no corpus for language(s) {', '.join(bare)}; "
                        "expected a data.corpora entry for each of the model's languages")
    if tcfg.per_language:
        toks = {l: train_tokenizer(round_robin([iter_texts(c, dd) for c in cfg.data.corpora if c.language == l]), tcfg)
                for l in langs}
    else:
        joint = train_tokenizer(round_robin([iter_texts(c, dd) for c in cfg.data.corpora]), tcfg)
        toks = {l: joint for l in langs}
    Vocabulary.build(toks, tcfg.anchors).save(run_dir)
