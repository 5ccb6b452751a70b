"""Multilingual vocabulary layouts: which token ids two languages share (the "anchors" of Conneau, Wu
et al., 2020).

    joint tokenizer,        anchors: shared   one tokenizer for all languages ("Default": the plain case,
                                              no `Vocabulary` needed)
    per-language tokenizers, anchors: shared  each language its own tokenizer; a token string both
                                              produce gets one id ("Default anchors": unioned vocabularies)
    either,                 anchors: none     no id is shared by two languages but the special tokens, as
                                              if every token were prefixed with its language ("No anchors");
                                              the softmax stays one shared matrix over all ids

A `Vocabulary` maps each language's local token ids to global ids. `for_language(l)` gives a view that
behaves like a `tokenizers.Tokenizer` (encode, encode_batch, token_to_id, ...) with global ids, so the
data pipeline, tasks and analysis tokenise a language's text without knowing the layout. Saved as
`vocabulary.json` next to the tokenizer files it names; `load_vocabulary` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from xlplastic.data.tokenizer_json import read_tokenizer_json
from xlplastic.errors import UserError
from xlplastic.paths import as_path, is_url, read_json_object, write_text_atomic

FORMAT = "xlplastic-vocabulary/1"
FILENAME = "vocabulary.json"


class _Encoding:
    """An `Encoding` with ids in the global layout; everything else (offsets, word_ids...) as encoded."""

    __slots__ = ("_enc", "ids")

    def __init__(self, enc, id_map: np.ndarray):
        self._enc = enc
        self.ids = id_map[np.asarray(enc.ids, dtype=np.int64)].tolist() if len(enc.ids) else []

    def __getattr__(self, name):
        return getattr(self._enc, name)


def _specials(tok: Tokenizer) -> dict[int, str]:
    return {i: t.content for i, t in tok.get_added_tokens_decoder().items() if t.special}


@dataclass
class Vocabulary:
    """Per-language tokenizers and their local -> global id maps (one global id space)."""

    languages: tuple[str, ...]
    tokenizers: dict[str, Tokenizer]
    anchors: str  # "shared" | "none"
    maps: dict[str, np.ndarray]  # language -> int64 [local vocab size] global ids
    size: int
    tokens: list[str]  # global id -> token string (language-tagged when anchors are none)

    @classmethod
    def build(cls, tokenizers: dict[str, Tokenizer], anchors: str) -> "Vocabulary":
        """Global ids: the special tokens first (shared by every language), then each language's tokens
        in language order and local id order, a new id unless `anchors == "shared"` and the string has one."""
        if anchors not in ("shared", "none"):
            raise UserError(f"anchors is {anchors!r}; expected 'shared' or 'none'")
        langs = tuple(tokenizers)
        if not langs:
            raise UserError("a vocabulary needs at least one language")
        first = _specials(tokenizers[langs[0]])
        for l in langs[1:]:
            if _specials(tokenizers[l]) != first:
                raise UserError(f"tokenizer of `{l}` has special tokens {sorted(_specials(tokenizers[l]).values())} but "
                                f"`{langs[0]}` has {sorted(first.values())}; expected the same special tokens in every language")
        tokens: list[str] = [first[i] for i in sorted(first)]
        special_global = {t: g for g, t in enumerate(tokens)}
        by_string: dict[str, int] = {}
        maps: dict[str, np.ndarray] = {}
        for l in langs:
            tok = tokenizers[l]
            n = tok.get_vocab_size()
            inv = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
            m = np.empty(n, dtype=np.int64)
            for i in range(n):
                t = inv[i]
                if t in special_global:
                    m[i] = special_global[t]
                elif anchors == "shared" and t in by_string:
                    m[i] = by_string[t]
                else:
                    m[i] = len(tokens)
                    by_string.setdefault(t, m[i])
                    tokens.append(t if anchors == "shared" else f"{l}:{t}")
            maps[l] = m
        return cls(langs, dict(tokenizers), anchors, maps, len(tokens), tokens)

    # -- per language --------------------------------------------------------------------------------
    def for_language(self, language: str) -> "LanguageTokenizer":
        if language not in self.maps:
            raise UserError(f"language `{language}` has no tokenizer in this vocabulary; expected one of {', '.join(self.languages)}")
        return LanguageTokenizer(self, language)

    def language_ids(self, language: str) -> np.ndarray:
        """Sorted global ids a language's tokenizer can produce (special tokens included)."""
        return np.unique(self.maps[language])

    def shared_ids(self) -> np.ndarray:
        """Global ids, other than special tokens, produced by more than one language (the anchors)."""
        specials = set(range(len(_specials(self.tokenizers[self.languages[0]]))))
        count = np.zeros(self.size, dtype=np.int64)
        for l in self.languages:
            count[np.unique(self.maps[l])] += 1
        return np.array([i for i in np.flatnonzero(count > 1) if i not in specials], dtype=np.int64)

    # -- the Tokenizer-like surface of the vocabulary as a whole (special tokens, size, identity) -----
    def _default(self) -> "LanguageTokenizer":
        return self.for_language(self.languages[0])

    def token_to_id(self, token: str) -> int | None:
        return self._default().token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tokens[i] if 0 <= i < self.size else None

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return self.size

    def get_added_tokens_decoder(self):
        return self._default().get_added_tokens_decoder()

    def to_str(self) -> str:
        """Canonical JSON of the whole layout (its hash identifies the vocabulary in checkpoints/caches)."""
        return json.dumps({"format": FORMAT, "anchors": self.anchors, "languages": list(self.languages),
                           "tokenizers": {l: json.loads(self.tokenizers[l].to_str()) for l in self.languages}},
                          sort_keys=True)

    def encode_batch(self, *a, **k):
        raise UserError("a multilingual vocabulary encodes text of one language at a time; expected for_language(l)")

    encode_batch_fast = encode = encode_batch

    # -- files ---------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Writes tokenizer.<lang>.json for each distinct tokenizer, then vocabulary.json (last: its
        presence means the set is complete)."""
        folder = as_path(folder)
        if not is_url(folder):
            folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        written: dict[int, str] = {}
        for l in self.languages:
            tok = self.tokenizers[l]
            if id(tok) not in written:
                name = f"tokenizer.{l}.json"
                write_text_atomic(folder / name, tok.to_str(pretty=True))  # what Tokenizer.save writes
                written[id(tok)] = name
            files[l] = written[id(tok)]
        meta = {"format": FORMAT, "anchors": self.anchors, "languages": list(self.languages), "tokenizers": files,
                "size": self.size}
        out = folder / FILENAME
        write_text_atomic(out, json.dumps(meta, indent=2) + "\n")
        return out


class LanguageTokenizer:
    """One language's tokenizer with ids in the vocabulary's global space (a `Tokenizer` look-alike)."""

    def __init__(self, vocab: Vocabulary, language: str):
        self.vocab, self.language = vocab, language
        self.tokenizer = vocab.tokenizers[language]
        self.id_map = vocab.maps[language]

    def encode_batch(self, texts, add_special_tokens: bool = False, **kw):
        return [_Encoding(e, self.id_map) for e in self.tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens, **kw)]

    def encode_batch_fast(self, texts, add_special_tokens: bool = False, **kw):
        return [_Encoding(e, self.id_map) for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=add_special_tokens, **kw)]

    def encode(self, text, add_special_tokens: bool = False, **kw):
        return _Encoding(self.tokenizer.encode(text, add_special_tokens=add_special_tokens, **kw), self.id_map)

    def token_to_id(self, token: str) -> int | None:
        i = self.tokenizer.token_to_id(token)
        return None if i is None else int(self.id_map[i])

    def id_to_token(self, i: int) -> str | None:
        return self.vocab.id_to_token(i)

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return self.vocab.size

    def get_added_tokens_decoder(self):
        return {int(self.id_map[i]): t for i, t in self.tokenizer.get_added_tokens_decoder().items()}

    def decode(self, ids, **kw) -> str:
        inv = {int(g): i for i, g in enumerate(self.id_map)}
        return self.tokenizer.decode([inv[i] for i in ids if i in inv], **kw)

    def to_str(self) -> str:
        return json.dumps({"vocabulary": json.loads(self.vocab.to_str()), "language": self.language}, sort_keys=True)


def for_language(tokenizer, language: str | None):
    """The tokenizer to encode `language`'s text with: a vocabulary's language view, or the tokenizer itself."""
    if isinstance(tokenizer, Vocabulary) and language is not None:
        return tokenizer.for_language(language)
    if isinstance(tokenizer, Vocabulary):
        return tokenizer._default()
    return tokenizer


def is_vocabulary_file(path: Path) -> bool:
    return path.name == FILENAME or (path.is_dir() and (path / FILENAME).is_file())


def load_vocabulary(path: str | Path) -> Vocabulary:
    """Reads a vocabulary.json (or a folder holding one) and the tokenizer files it names."""
    p = as_path(path).expanduser()
    if p.is_dir():
        p = p / FILENAME
    if not p.is_file():
        raise UserError(f"{p}: vocabulary file not found; expected the vocabulary.json of a multilingual run")
    meta = read_json_object(p, "the vocabulary.json that xlplastic writes")
    if meta.get("format") != FORMAT:
        raise UserError(f"{p}: format is {meta.get('format')!r}; expected {FORMAT!r}")
    cache: dict[str, Tokenizer] = {}
    toks = {}
    for l in meta["languages"]:
        name = meta["tokenizers"][l]
        if name not in cache:
            cache[name] = read_tokenizer_json(p.parent / name)
        toks[l] = cache[name]
    vocab = Vocabulary.build(toks, meta["anchors"])
    if meta.get("size") not in (None, vocab.size):
        raise UserError(f"{p}: records {meta['size']} ids but its tokenizers give {vocab.size}; expected unchanged tokenizer files")
    return vocab
