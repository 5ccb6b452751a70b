"""Per-layer representations of a trained checkpoint, through the same sharded forward pass as training.

Layer 0 is the embedding output (after the embedding LayerNorm), layer i the output of block i (with a
pre-LN model the last one after the final norm). Three views, all pooled on device:

* sentence vectors: the mean over a sentence's subword states, special tokens and padding excluded;
* word vectors in context: each whitespace word's subwords averaged (one vector per occurrence), used
  for contextual word alignment on parallel sentences;
* word types: a word's in-context vector averaged over all its occurrences in a corpus (accumulated on
  device by word slot, so the corpus size costs time, not memory), and the static embedding rows of
  words that are a single token.

Words are tokenised as the task features do (`" " + word` after the first word), so a word gets the
same pieces as in running text. Text longer than `seq_len` is truncated at a word boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xlplastic import checkpoint as ckpt_lib
from xlplastic import model as model_lib
from xlplastic.config import Config, MeshConfig, load_config
from xlplastic.data.tokenizers import SpecialTokens, special_tokens
from xlplastic.data.vocabulary import for_language
from xlplastic.errors import UserError
from xlplastic.hf_config import hf_dir
from xlplastic.paths import as_path
from xlplastic.sharding import activation_rules, batch_sharding, make_mesh, replicated, tree_shardings


@dataclass
class LoadedModel:
    """An encoder restored from a run's latest checkpoint, ready for jitted forward passes."""

    name: str
    run_dir: Path
    cfg: Config
    step: int
    tokenizer: Any  # tokenizers.Tokenizer or a multilingual Vocabulary
    specials: SpecialTokens
    params: dict
    mesh: Any
    merge: Any  # params -> Encoder
    compiled: dict = field(default_factory=dict)  # (view, layers) -> jitted pooling function
    param_shardings: Any = None  # None = the shardings of `params`

    @property
    def num_layers(self) -> int:
        """Representation layers: embeddings + every block."""
        return self.cfg.model.num_layers + 1

    @property
    def width(self) -> int:
        return self.cfg.model.hidden_size

    def language_id(self, language: str) -> int:
        return self.cfg.language_index(language)

    def tokenizer_for(self, language: str):
        return for_language(self.tokenizer, language)

    def static_embeddings(self, language: str) -> np.ndarray:
        """The token-embedding matrix [V, D] that `language`'s tokens read."""
        lang = language if self.cfg.model.separate.embeddings else None
        return np.asarray(jax.device_get(self.merge(self.params).token_embeddings(lang)), np.float32)


def load_model(run_dir: str | Path, *, name: str | None = None, devices: Sequence | None = None,
               mesh: MeshConfig | None = None) -> LoadedModel:
    """The encoder of `run_dir` (its config.yaml, tokenizer and latest checkpoint); task heads are ignored.
    `hf:DIR` is a Hugging Face model folder instead (hf.load_hf: its weights read straight onto the mesh)."""
    from xlplastic.data.run_tokenizer import prepare_tokenizer

    if (d := hf_dir(run_dir)) is not None:
        from xlplastic.hf import load_hf

        m = load_hf(d, mesh or MeshConfig(data=-1), devices=devices)
        return LoadedModel(name or m.name, m.path, m.config, 0, m.tokenizer, m.specials, m.params, m.mesh, m.merge,
                           param_shardings=m.param_shardings)
    run_dir = as_path(run_dir, resolve=True)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir}: no config.yaml; expected a run directory written by `xlplastic run`")
    cfg = load_config(cfg_path)
    _, step = ckpt_lib.latest_state_dir(run_dir)
    tokenizer = prepare_tokenizer(cfg, run_dir)
    sp = special_tokens(tokenizer)
    vocab = cfg.model.vocab_size or tokenizer.get_vocab_size()
    msh = make_mesh(mesh or MeshConfig(data=-1), devices)
    abstract_model = nnx.eval_shape(lambda: model_lib.create(cfg.model, vocab, cfg.train.seed))
    graphdef, abstract_state = nnx.split(abstract_model, nnx.Param)
    abstract_params = nnx.to_pure_dict(abstract_state)
    shardings = tree_shardings(abstract_params, model_lib.logical_axes(abstract_model), msh, cfg.mesh.rules)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_params, shardings)

    def take(key, here, there):
        if there is None:
            raise UserError(f"{run_dir}: checkpoint has no parameter `{key}`; expected an encoder of its config's shape")
        if tuple(there) != tuple(here):
            raise UserError(f"{run_dir}: `{key}` has shape {tuple(there)} but its config gives {tuple(here)}; "
                            "expected the checkpoint of this run")
        return True

    params, _ = ckpt_lib.load_params(run_dir, abstract, take)
    return LoadedModel(name or run_dir.name, run_dir, cfg, step, tokenizer, sp, params, msh,
                       lambda p: model_lib.merge(graphdef, abstract_state, p))


def from_trainer(trainer, params, tokenizer, *, name: str = "current", step: int = 0) -> LoadedModel:
    """A `LoadedModel` over a training run's live parameters (the analysis hook during training)."""
    return LoadedModel(name, Path("."), trainer.cfg, step, tokenizer, special_tokens(tokenizer), params, trainer.mesh,
                       trainer.merge, param_shardings=trainer.param_shardings)


# ----------------------------------------------------------------------------------------------
# Batches of words


@dataclass
class WordBatches:
    """Sentences as padded token rows with, per token, the index of its word (-1: special/pad/cut)."""

    tokens: np.ndarray  # int32 [N, T]
    word_of_token: np.ndarray  # int32 [N, T] word index within the sentence
    words: list[list[str]]  # the words kept per sentence (truncation drops the tail)
    pieces: np.ndarray  # int32 [N, T] number of pieces of the token's word (0 where no word)


def encode_words(tok, sp: SpecialTokens, sentences: Sequence[Sequence[str]], seq_len: int) -> WordBatches:
    flat = [w if j == 0 else " " + w for s in sentences for j, w in enumerate(s)]
    pieces = [e.ids for e in tok.encode_batch(flat, add_special_tokens=False)] if flat else []
    N = len(sentences)
    tokens = np.full((N, seq_len), sp.pad, np.int32)
    word_of = np.full((N, seq_len), -1, np.int32)
    n_pieces = np.zeros((N, seq_len), np.int32)
    kept: list[list[str]] = []
    cursor = 0
    for n, s in enumerate(sentences):
        row, k = [sp.bos], 0
        for j, p in enumerate(pieces[cursor: cursor + len(s)]):
            p = p or [sp.unk]
            if len(row) + len(p) > seq_len - 1:
                break
            word_of[n, len(row): len(row) + len(p)] = j
            n_pieces[n, len(row): len(row) + len(p)] = len(p)
            row += p
            k += 1
        cursor += len(s)
        row.append(sp.eos)
        tokens[n, : len(row)] = row
        kept.append(list(s[:k]))
    return WordBatches(tokens, word_of, kept, n_pieces)


def _batches(n: int, batch: int):
    for lo in range(0, n, batch):
        idx = np.arange(lo, lo + batch)
        yield idx[idx < n], np.minimum(idx, n - 1)


def _global_batch(model: LoadedModel, batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the batch shards and of the processes."""
    import math

    shards = math.lcm(model.mesh.shape["data"] * model.mesh.shape["fsdp"], jax.process_count())
    return -(-batch_size // shards) * shards


# ----------------------------------------------------------------------------------------------
# Jitted pooling functions (cached per model and layer set)


def _fn(model: LoadedModel, name: str, layers: Sequence[int]):
    """The jitted pooling function `name` for these layers, compiled once per model."""
    key = (name, tuple(int(l) for l in layers))
    if key not in model.compiled:
        model.compiled[key] = _build(model, key[1])[name]
    return model.compiled[key]


def _build(model: LoadedModel, layers: tuple[int, ...]) -> dict:
    cfg, mesh = model.cfg, model.mesh
    pad = model.specials.pad
    bsh, lsh, rep = batch_sharding(mesh, 2), batch_sharding(mesh, 1), replicated(mesh)
    psh = model.param_shardings if model.param_shardings is not None else jax.tree.map(lambda x: x.sharding, model.params)
    layer_idx = np.asarray(layers)

    def hidden(params, tokens, lang):
        with activation_rules(mesh, cfg.mesh.rules):
            enc = model.merge(params)
            lengths = (tokens != pad).sum(-1).astype(jnp.int32)
            lang_B = lang if cfg.model.uses_language_ids else None
            _, hs = enc.encode(tokens, lengths, lang_B=lang_B, return_hidden=True)
            return jnp.stack([hs[i] for i in layer_idx]).astype(jnp.float32)  # [L, B, T, D]

    def sentence(params, tokens, lang, word_of):
        h = hidden(params, tokens, lang)
        w = (word_of >= 0).astype(jnp.float32)
        return jnp.einsum("lbtd,bt->lbd", h, w) / jnp.maximum(w.sum(-1), 1.0)[None, :, None]

    def words_in_context(params, tokens, lang, word_of, n_pieces, max_words: int):
        """[L, B, W, D]: each word's subwords averaged (zeros past the sentence's words)."""
        h = hidden(params, tokens, lang)
        onehot = jax.nn.one_hot(word_of, max_words, dtype=jnp.float32) / jnp.maximum(n_pieces, 1)[..., None]
        return jnp.einsum("lbtd,btw->lbwd", h, onehot)

    def accumulate(acc, params, tokens, lang, slot_of, n_pieces):
        """acc[L, S+1, D] += each token's state / its word's piece count, in its word type's slot
        (slot S collects everything that is not a word of interest)."""
        h = hidden(params, tokens, lang)
        S = acc.shape[1] - 1
        slots = jnp.where(slot_of >= 0, slot_of, S).reshape(-1)
        weight = jnp.where(slot_of >= 0, 1.0 / jnp.maximum(n_pieces, 1), 0.0)
        contrib = (h * weight[None, ..., None]).reshape(h.shape[0], -1, h.shape[-1])
        return acc + jax.vmap(lambda c: jax.ops.segment_sum(c, slots, num_segments=S + 1))(contrib)

    return {
        # outputs replicated: small, and readable on every process of a multi-process run
        "sentence": jax.jit(sentence, in_shardings=(psh, bsh, lsh, bsh), out_shardings=rep),
        "words": jax.jit(words_in_context, static_argnums=(5,), in_shardings=(psh, bsh, lsh, bsh, bsh), out_shardings=rep),
        "accumulate": jax.jit(accumulate, in_shardings=(rep, psh, bsh, lsh, bsh, bsh), out_shardings=rep,
                              donate_argnums=(0,)),
    }


def check_layers(model: LoadedModel, layers: Sequence[int] | None) -> list[int]:
    """All layers by default; an index outside 0..num_layers-1 is an error naming the model's depth."""
    if layers is None:
        return list(range(model.num_layers))
    bad = [l for l in layers if not 0 <= l < model.num_layers]
    if bad:
        raise UserError(f"layer(s) {bad} out of range for {model.name}: it has layers 0..{model.num_layers - 1} "
                        f"(0 = embeddings, {model.cfg.model.num_layers} blocks)")
    return list(layers)


def _put(model: LoadedModel, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A global batch from the full host arrays: each process contributes its own contiguous rows."""
    from xlplastic.sharding import put_global_batch

    n = len(next(iter(arrays.values())))
    per, pi = n // jax.process_count(), jax.process_index()
    return put_global_batch({k: v[pi * per: (pi + 1) * per] for k, v in arrays.items()}, model.mesh, n)


# ----------------------------------------------------------------------------------------------
# Public views


def prepare_sentences(model: LoadedModel, sentences: Sequence[str], language: str, *, batch_size: int = 32,
                      seq_len: int | None = None) -> list[tuple[int, dict[str, jax.Array]]]:
    """Tokenised sentences as device batches: [(number of real rows, {tokens, lang, word_of})]; the last
    batch is padded with copies of the last sentence. Placed once, pooled as often as needed."""
    seq_len = seq_len or min(model.cfg.data.seq_len, model.cfg.model.max_positions - model.cfg.model.position_offset)
    wb = encode_words(model.tokenizer_for(language), model.specials, [s.split() for s in sentences], seq_len)
    lang = np.full(len(sentences), model.language_id(language), np.int32)
    out = []
    for real, idx in _batches(len(sentences), _global_batch(model, batch_size)):
        with jax.transfer_guard_host_to_device("allow"):
            out.append((len(real), _put(model, {"tokens": wb.tokens[idx], "lang": lang[idx], "word_of": wb.word_of_token[idx]})))
    return out


def pooled(model: LoadedModel, params, batches, layers: Sequence[int]):
    """Yields (n, device array [L, B, D]) of mean-pooled sentence vectors of prepared batches."""
    fn = _fn(model, "sentence", layers)
    for n, b in batches:
        yield n, fn(params, b["tokens"], b["lang"], b["word_of"])


def sentence_batches(model: LoadedModel, sentences: Sequence[str], language: str, *, layers: Sequence[int],
                     batch_size: int = 32, seq_len: int | None = None):
    """Yields (number of real rows, device array [L, B, D] of mean-pooled sentence vectors); use only
    the first `n` rows of each."""
    batches = prepare_sentences(model, sentences, language, batch_size=batch_size, seq_len=seq_len)
    yield from pooled(model, model.params, batches, layers)


def sentence_vectors(model: LoadedModel, sentences: Sequence[str], language: str, *, layers: Sequence[int] | None = None,
                     batch_size: int = 32, seq_len: int | None = None) -> np.ndarray:
    """float32 [L, N, D]: mean-pooled sentence vectors per layer (special tokens excluded)."""
    layers = check_layers(model, layers)
    if not sentences:
        raise UserError(f"{model.name}: no sentences in `{language}` to represent; expected at least one")
    out = [np.asarray(v)[:, :n] for n, v in sentence_batches(model, sentences, language, layers=layers,
                                                            batch_size=batch_size, seq_len=seq_len)]
    return np.concatenate(out, axis=1)


def words_in_context(model: LoadedModel, sentences: Sequence[Sequence[str]], language: str, *,
                     layers: Sequence[int] | None = None, batch_size: int = 32, seq_len: int | None = None
                     ) -> tuple[list[np.ndarray], list[list[str]]]:
    """Per sentence, float32 [L, n_words, D] (subwords averaged per word) and the words kept."""
    layers = check_layers(model, layers)
    seq_len = seq_len or min(model.cfg.data.seq_len, model.cfg.model.max_positions - model.cfg.model.position_offset)
    wb = encode_words(model.tokenizer_for(language), model.specials, sentences, seq_len)
    lang = np.full(len(sentences), model.language_id(language), np.int32)
    W = max(1, max((len(w) for w in wb.words), default=1))
    fn = _fn(model, "words", layers)
    out: list[np.ndarray] = []
    for real, idx in _batches(len(sentences), _global_batch(model, batch_size)):
        with jax.transfer_guard_host_to_device("allow"):
            b = _put(model, {"tokens": wb.tokens[idx], "lang": lang[idx], "word_of": wb.word_of_token[idx],
                             "pieces": wb.pieces[idx]})
        v = np.asarray(fn(model.params, b["tokens"], b["lang"], b["word_of"], b["pieces"], W))
        out += [v[:, i, : len(wb.words[j])] for i, j in enumerate(real)]
    return out, wb.words


def word_type_vectors(model: LoadedModel, sentences: Sequence[str], language: str, vocabulary: Sequence[str], *,
                      layers: Sequence[int] | None = None, batch_size: int = 32, seq_len: int | None = None
                      ) -> tuple[list[str], np.ndarray]:
    """In-context vectors of word types averaged over their occurrences in `sentences`, for the words
    of `vocabulary` that occur: (words found, float32 [L, n_found, D]). Accumulated on device."""
    layers = check_layers(model, layers)
    seq_len = seq_len or min(model.cfg.data.seq_len, model.cfg.model.max_positions - model.cfg.model.position_offset)
    slot = {w: i for i, w in enumerate(dict.fromkeys(vocabulary))}
    split = [s.split() for s in sentences]
    wb = encode_words(model.tokenizer_for(language), model.specials, split, seq_len)
    word_slot = np.array([[slot.get(w, -1) for w in ws] + [-1] for ws in wb.words], dtype=object)
    slot_of = np.full_like(wb.word_of_token, -1)
    for n in range(len(split)):
        m = wb.word_of_token[n] >= 0
        slot_of[n, m] = np.asarray(word_slot[n], np.int32)[wb.word_of_token[n, m]]
    counts = np.zeros(len(slot), np.int64)
    for n in range(len(split)):
        ids = np.asarray(word_slot[n][:-1], np.int64)
        np.add.at(counts, ids[ids >= 0], 1)
    lang = np.full(len(sentences), model.language_id(language), np.int32)
    fn = _fn(model, "accumulate", layers)
    rep = replicated(model.mesh)
    with jax.transfer_guard_host_to_device("allow"):
        acc = jax.device_put(np.zeros((len(layers), len(slot) + 1, model.width), np.float32), rep)
    for real, idx in _batches(len(sentences), _global_batch(model, batch_size)):
        s = np.where((np.arange(len(idx)) < len(real))[:, None], slot_of[idx], -1)  # padded copies add nothing
        with jax.transfer_guard_host_to_device("allow"):
            b = _put(model, {"tokens": wb.tokens[idx], "lang": lang[idx], "slot": s.astype(np.int32),
                             "pieces": wb.pieces[idx]})
        acc = fn(acc, model.params, b["tokens"], b["lang"], b["slot"], b["pieces"])
    found = np.flatnonzero(counts > 0)
    sums = np.asarray(acc)[:, found]
    words = list(slot)
    return [words[i] for i in found], sums / counts[found][None, :, None]


def static_word_vectors(model: LoadedModel, language: str, vocabulary: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Embedding rows of the words of `vocabulary` that `language`'s tokenizer keeps as ONE token (as
    Conneau et al. do for non-contextual embeddings): (words, float32 [n, D])."""
    tok = model.tokenizer_for(language)
    words = list(dict.fromkeys(vocabulary))
    enc = tok.encode_batch([" " + w for w in words], add_special_tokens=False) if words else []
    enc0 = tok.encode_batch(words, add_special_tokens=False) if words else []
    keep, ids = [], []
    for w, e, e0 in zip(words, enc, enc0):
        one = e.ids if len(e.ids) == 1 else (e0.ids if len(e0.ids) == 1 else None)
        if one is not None:
            keep.append(w)
            ids.append(one[0])
    E = model.static_embeddings(language)
    return keep, E[np.asarray(ids, np.int64)] if ids else np.zeros((0, model.width), np.float32)
