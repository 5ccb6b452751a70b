"""Tokenizers: train (byte-level BPE, unigram, WordPiece, word-level), load, and find the special tokens.

Why: the trainer needs one `tokenizers.Tokenizer` whatever its kind, plus the ids of pad/mask/bos/eos/
unk under either convention (RoBERTa `<s>..` or BERT `[CLS]..`). No post-processor inserts specials:
packing places bos/eos itself, so encoding a document yields its content tokens only.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from xlplastic.config import TokenizerConfig
from xlplastic.data.tokenizer_json import read_tokenizer_json
from xlplastic.data.vocabulary import is_vocabulary_file, load_vocabulary
from xlplastic.errors import UserError
from xlplastic.paths import as_path

# Ids follow list order: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4 (RoBERTa / XLM-R).
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
# [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 (BERT).
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# role -> token, per convention
_CONVENTIONS = (
    dict(pad="<pad>", mask="<mask>", bos="<s>", eos="</s>", unk="<unk>"),
    dict(pad="[PAD]", mask="[MASK]", bos="[CLS]", eos="[SEP]", unk="[UNK]"),
)


@dataclass(frozen=True)
class SpecialTokens:
    pad: int
    mask: int
    bos: int
    eos: int
    unk: int
    all_ids: tuple[int, ...]  # every special token id (never masked, never a random replacement)


def _bpe(cfg: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.BPE())
    if cfg.lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(ROBERTA_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def _unigram(cfg: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.Unigram())
    norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if cfg.lowercase else [])
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=cfg.vocab_size, special_tokens=list(ROBERTA_SPECIALS), unk_token="<unk>", show_progress=False
    )
    return tok, trainer


def _wordpiece(cfg: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=list(BERT_SPECIALS), show_progress=False
    )
    return tok, trainer


def _wordlevel(cfg: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    """One token per whitespace-separated word (the lab's words): source and target tokens then
    correspond one to one through a word dictionary, which the oracle assembly needs."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    if cfg.lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=list(ROBERTA_SPECIALS), show_progress=False
    )
    return tok, trainer


_BUILDERS = {"bpe": _bpe, "unigram": _unigram, "wordpiece": _wordpiece, "wordlevel": _wordlevel}


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """Trains a `cfg.kind` tokenizer on at most `cfg.train_max_lines` texts."""
    tok, trainer = _BUILDERS[cfg.kind](cfg)
    lines = itertools.islice(texts, cfg.train_max_lines) if cfg.train_max_lines is not None else texts
    try:
        tok.train_from_iterator(lines, trainer=trainer)
    except Exception as e:  # the Rust trainer raises a bare Exception (e.g. unigram: too few pieces for the alphabet)
        raise UserError(
            f"tokenizer training ({cfg.kind}, vocab_size {cfg.vocab_size}) failed: {str(e).strip() or type(e).__name__}; "
            "expected a vocabulary large enough for the corpus' characters (raise vocab_size)"
        ) from None
    if tok.get_vocab_size() <= len(ROBERTA_SPECIALS):
        raise UserError(f"tokenizer training ({cfg.kind}) learnt no vocabulary; expected non-empty training text")
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A `tokenizer.json` (or a folder holding one) from the `tokenizers` library, or a multilingual
    `vocabulary.json` (see vocabulary.py; it behaves like a tokenizer for special tokens and size)."""
    p = as_path(path).expanduser()
    if is_vocabulary_file(p):
        return load_vocabulary(p)
    return read_tokenizer_json(p)


def special_tokens(tok: Tokenizer) -> SpecialTokens:
    """Ids of pad/mask/bos/eos/unk under the RoBERTa or the BERT convention, whichever `tok` uses."""
    conv = next((c for c in _CONVENTIONS if tok.token_to_id(c["mask"]) is not None), None)
    if conv is None:
        raise UserError("tokenizer has neither `<mask>` nor `[MASK]`; expected RoBERTa (<s> <pad> </s> <unk> <mask>) or BERT ([CLS] [PAD] [SEP] [UNK] [MASK]) specials")
    ids = {role: tok.token_to_id(t) for role, t in conv.items()}
    missing = [conv[r] for r, i in ids.items() if i is None]
    if missing:
        raise UserError(f"tokenizer lacks special token(s) {' '.join(missing)}; expected all of {' '.join(conv.values())}")
    added = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    return SpecialTokens(**ids, all_ids=tuple(sorted(added | set(ids.values()))))


def round_robin(streams: list[Iterator[str]]) -> Iterator[str]:
    """Interleaves streams so a line cap samples every corpus, not just the first."""
    active = list(streams)
    while active:
        for s in list(active):
            try:
                yield next(s)
            except StopIteration:
                active.remove(s)


def tokenizer_json(tok: Tokenizer) -> str:
    """Canonical JSON of a tokenizer (stable key order), used in cache keys."""
    return json.dumps(json.loads(tok.to_str()), sort_keys=True)
