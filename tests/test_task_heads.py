"""Task features (tokenisation, subword/word alignment, QA windows) and task heads (losses, predictions, scores)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from xlplastic import model as model_lib  # noqa: E402
from xlplastic.config import ModelConfig, TokenizerConfig  # noqa: E402
from xlplastic.data import synthetic  # noqa: E402
from xlplastic.data.tokenizers import special_tokens, train_tokenizer  # noqa: E402
from xlplastic.tasks.features import encode, num_labels, score  # noqa: E402
from xlplastic.tasks.heads import create_head, head_loss, head_predict  # noqa: E402
from xlplastic.tasks.readers import ClassificationExample, ParsingExample, QAExample, TaggingExample, label_map  # noqa: E402

CFG = ModelConfig(hidden_size=16, num_heads=2, mlp_dim=32, num_layers=1, dropout=0.1)


@pytest.fixture(scope="module")
def corpus():
    return synthetic.generate(300, 200, 0)


@pytest.fixture(scope="module")
def toks(corpus):
    lines = [" ".join(s) for s in corpus.sentences]
    out = {}
    for kind in ("bpe", "wordpiece"):
        tok = train_tokenizer(lines, TokenizerConfig(kind=kind, vocab_size=300))
        out[kind] = (tok, special_tokens(tok))
    return out


def _tagging(corpus, n, extra=()):
    return [TaggingExample(tuple(s), tuple(t)) for s, t in zip(corpus.sentences[:n], corpus.tags[:n])] + list(extra)


# ------------------------------------------------------------------------------------------- features


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_first_subwords_align_with_words(toks, corpus, kind):
    tok, sp = toks[kind]
    extra = [TaggingExample(("Zürich", ",", "naïve", "kusho"), ("PROPN", "PUNCT", "ADJ", "NOUN"))] if kind == "bpe" else []
    examples = _tagging(corpus, 40, extra)
    lm, T = label_map(examples), 28
    f = encode("pos", examples, tok, sp, T, lm)
    a = f.arrays
    assert a["tokens"].shape == (len(examples), T) and a["word_index"].shape == a["labels"].shape == (len(examples), T - 2)
    assert a["word_mask"].dtype == np.float32 and a["tokens"].dtype == np.int32
    assert 0 < f.meta["truncated_words"].sum() and f.meta["truncated_words"].min() == 0
    for n, e in enumerate(examples):
        k, row = int(f.meta["kept_words"][n]), a["tokens"][n]
        length = int((row != sp.pad).sum())
        assert k + f.meta["truncated_words"][n] == len(e.words) and a["word_mask"][n].sum() == k
        assert row[0] == sp.bos and row[length - 1] == sp.eos and (row[length:] == sp.pad).all()
        assert (a["word_index"][n, k:] == 0).all() and (a["word_mask"][n, k:] == 0).all()
        bounds = [*a["word_index"][n, :k].tolist(), length - 1]
        for i in range(k):  # each word's subwords, from its first one to the next word's, decode to the word
            assert tok.decode(row[bounds[i] : bounds[i + 1]].tolist()).strip() == e.words[i]
        assert a["labels"][n, :k].tolist() == [lm[t] for t in e.tags[:k]]
        if k == len(e.words):  # per-word encoding == encoding of the running text (leading spaces included)
            assert row[1 : length - 1].tolist() == tok.encode(" ".join(e.words), add_special_tokens=False).ids


def test_truncated_words_count_as_errors(toks, corpus):
    tok, sp = toks["bpe"]
    examples = _tagging(corpus, 20)
    ner = [TaggingExample(e.words, tuple("B-ENT" if t == "PROPN" else "O" for t in e.tags)) for e in examples]
    kept_share = None
    for kind, exs in (("pos", examples), ("ner", ner)):
        lm = label_map(exs)
        f = encode(kind, exs, tok, sp, 24, lm)
        kept, total = f.meta["kept_words"].sum(), sum(len(e.words) for e in exs)
        kept_share = kept / total
        out = score(kind, {"labels": f.arrays["labels"]}, f, exs, lm)  # perfect on every word that fitted
        assert kept < total and out["accuracy"] == pytest.approx(kept_share)
        if kind == "ner":
            assert out["precision"] == 1.0 and out["recall"] < 1.0
            full = encode(kind, exs, tok, sp, 256, lm)
            assert score(kind, {"labels": full.arrays["labels"]}, full, exs, lm)["f1"] == 1.0


def test_classification_pairs_keep_both_segments(toks, corpus):
    tok, sp = toks["bpe"]
    long, short = " ".join(corpus.sentences[0] * 3), " ".join(corpus.sentences[1][:3])
    ids = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    examples = [
        ClassificationExample(long, short, "a"),
        ClassificationExample(short, long, "b"),
        ClassificationExample(long, long + " x", "a"),
        ClassificationExample(short, None, "b"),
        ClassificationExample(short, None, "unseen"),
    ]
    T = 32
    f = encode("classification", examples, tok, sp, T, {"a": 0, "b": 1})
    rows = f.arrays["tokens"].tolist()
    assert f.arrays["label"].tolist() == [0, 1, 0, 1, -1]
    for row, e in zip(rows[:3], examples[:3]):
        assert len(row) == T and row[0] == sp.bos and row[-1] == sp.eos and row.count(sp.eos) == 3
        cut = row.index(sp.eos)
        a, b = row[1:cut], row[cut + 2 : -1]
        assert row[cut + 1] == sp.eos and len(a) + len(b) == T - 4 and a and b
        assert a == ids(e.text)[: len(a)] and b == ids(e.text_pair)[: len(b)]
    assert rows[0][-len(ids(short)) - 1 : -1] == ids(short)  # the short segment is kept whole
    assert rows[1][1 : len(ids(short)) + 1] == ids(short)
    n3a = rows[2].index(sp.eos) - 1
    assert abs(n3a - (T - 4 - n3a)) <= 1  # two long segments share the room
    n = len(ids(short))
    assert rows[3][: n + 3] == [sp.bos, *ids(short), sp.eos, sp.pad] and set(rows[3][n + 2 :]) == {sp.pad}


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_qa_windows_round_trip(toks, corpus, kind):
    tok, sp = toks[kind]
    sents = [" ".join(s) for s in corpus.sentences[:12]]
    ctx = ". ".join(sents[:8]) + ". The answer is Zürich, Switzerland."
    mid = sents[9]
    w = corpus.sentences[9]
    span = " ".join(w[2:5])
    examples = [
        QAExample("end", "where is it?", ctx, (("Zürich", ctx.index("Zürich")),)),
        QAExample("start", "what first?", ctx, ((corpus.sentences[0][0], 0),)),
        QAExample("mid", "which words?", mid, ((span, mid.index(" " + span) + 1), (w[3], 0))),
        QAExample("country", "which country?", ctx, (("Switzerland", ctx.index("Switzerland")),)),
    ]
    T = 48
    f = encode("qa", examples, tok, sp, T, {}, doc_stride=16, max_query_len=8)
    a, m = f.arrays, f.meta
    N = len(a["tokens"])
    assert a["start"].shape == a["end"].shape == m["example_index"].shape == (N,) and m["offsets"].shape == (N, T, 2)
    assert f.num_examples == 4 and sorted(set(m["example_index"].tolist())) == [0, 1, 2, 3]
    for i, ex in enumerate(examples):
        feats = np.flatnonzero(m["example_index"] == i)
        hits = [j for j in feats if a["start"][j] > 0]
        assert hits, ex.id
        for j in hits:  # the gold token span reproduces the answer exactly from the context
            s, e = a["start"][j], a["end"][j]
            assert ex.context[m["offsets"][j, s, 0] : m["offsets"][j, e, 1]] == ex.answers[0][0]
    end_feats = np.flatnonzero(m["example_index"] == 0)
    assert len(end_feats) > 2 and a["start"][end_feats[0]] == 0  # answer only in a later window
    ctx_tokens = m["offsets"][:, :, 0] >= 0
    assert not ctx_tokens[:, 0].any() and (ctx_tokens.sum(1) > 0).all()
    # perfect logits (from the gold positions) decode to the gold answers
    start = np.full((N, T), -5.0, np.float32)
    end = start.copy()
    rows = np.flatnonzero(a["start"] > 0)
    start[rows, a["start"][rows]] = 10.0
    end[rows, a["end"][rows]] = 10.0
    out = score("qa", {"start_logits": start, "end_logits": end}, f, examples, {})
    assert out == {"exact_match": 100.0, "f1": 100.0}


# ---------------------------------------------------------------------------------------------- heads


def _random_heads(rng, n):
    """A head (0 = root) for each of n words, never the word itself; not necessarily a tree."""
    return [int(rng.choice([h for h in range(n + 1) if h != i + 1])) for i in range(n)]


def _random_tree(rng, n):
    """A random tree whose every prefix is one too: word 1 on the root, each later word under an earlier one.

    So the words that fit after truncation always form a tree whose arcs were all trained (a word whose
    head is truncated away has untrained scores, and fitting it into the decoded tree may move a trained arc).
    """
    return [0] + [int(rng.integers(1, i + 1)) for i in range(1, n)]


def _batch(kind, rng, B=4, T=12, L=5):
    W = T - 2
    n = rng.integers(3, W + 1, size=B)
    mask = (np.arange(W)[None] < n[:, None]).astype(np.float32)
    batch = {"tokens": rng.integers(5, 50, size=(B, T)).astype(np.int32)}
    if kind == "classification":
        batch["label"] = rng.integers(0, L, size=B).astype(np.int32)
    elif kind == "qa":
        batch["start"] = rng.integers(0, T, size=B).astype(np.int32)
        batch["end"] = rng.integers(0, T, size=B).astype(np.int32)
    else:
        batch["word_index"] = ((np.arange(W)[None] + 1) * mask).astype(np.int32)
        batch["word_mask"] = mask
        batch["labels"] = (rng.integers(0, L, size=(B, W)) * mask).astype(np.int32)
        if kind == "parsing":
            heads = np.zeros((B, W), np.int32)
            for b in range(B):
                heads[b, : n[b]] = _random_heads(rng, n[b])
            batch["heads"], batch["rels"] = heads, batch["labels"]
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _fit(kind, h, batch, n_labels, steps, lr, cfg=CFG):
    """Trains a fresh head with jitted adam steps over pure-dict params; returns (head, losses)."""
    head = create_head(kind, cfg, n_labels, seed=0)
    graphdef, params = model_lib.split(head)
    abstract = nnx.split(head, nnx.Param)[1]
    tx = optax.adam(lr)

    @jax.jit
    def step(params, opt_state, i):
        key = jax.random.fold_in(jax.random.key(1), i)

        def loss_fn(p):
            loss, count, _ = head_loss(kind, model_lib.merge(graphdef, abstract, p), h, batch, key)
            return loss / count

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = tx.init(params), []
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, i)
        losses.append(float(loss))
    return model_lib.merge(graphdef, abstract, params), losses


_SHAPES = {"classification": {"label": (4,)}, "pos": {"labels": (4, 10)}, "ner": {"labels": (4, 10)},
           "qa": {"start_logits": (4, 12), "end_logits": (4, 12)}}


def _check(kind, head, h, batch):
    """Logical axes on every parameter; jitted predict + loss: shapes, dtypes, counts. Returns predictions."""
    axes = jax.tree.leaves(model_lib.logical_axes(head), is_leaf=lambda a: isinstance(a, tuple))
    params = jax.tree.leaves(model_lib.split(head)[1])
    assert len(axes) == len(params)
    for ax, x in zip(axes, params):
        assert len(ax) == x.ndim and set(ax) <= {"embed", "hidden", "mlp", "labels", "kv", "heads"}, ax
    pred, (loss, count, correct) = jax.jit(
        lambda hd, h, b: (head_predict(kind, hd, h, b), head_loss(kind, hd, h, b, None))
    )(head, h, batch)
    assert loss.dtype == count.dtype == correct.dtype == jnp.float32 and 0 <= correct <= count
    target = {"classification": "label", "qa": "start", "parsing": "heads"}.get(kind, "labels")
    valid = batch[target] >= 0
    assert count == (valid if kind in ("classification", "qa") else valid * batch["word_mask"]).sum()
    return {k: np.asarray(v) for k, v in pred.items()}


@pytest.mark.parametrize("kind", ["classification", "pos", "qa"])  # ner = pos head; parsing: test below
def test_heads_learn_and_predict(kind):
    rng = np.random.default_rng(0)
    batch = _batch(kind, rng)
    h = jnp.asarray(rng.normal(size=(4, 12, CFG.hidden_size)).astype(np.float32))
    head, losses = _fit(kind, h, batch, num_labels(kind, dict.fromkeys("abcde")), steps=25, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0], losses
    pred = _check(kind, head, h, batch)
    assert {k: v.shape for k, v in pred.items()} == _SHAPES[kind]


@pytest.mark.parametrize("kind", ["ner", "parsing"])
def test_loss_ignores_padding_words(kind):
    rng = np.random.default_rng(1)
    batch = _batch(kind, rng)
    h = jnp.asarray(rng.normal(size=(4, 12, CFG.hidden_size)).astype(np.float32))
    head = create_head(kind, CFG, 5, seed=0)
    pad = batch["word_mask"] == 0
    noisy = dict(batch, labels=jnp.where(pad, 3, batch["labels"]))
    if kind == "parsing":
        noisy.update(heads=jnp.where(pad, 2, batch["heads"]), rels=jnp.where(pad, 4, batch["rels"]))
    loss = jax.jit(lambda b: head_loss(kind, head, h, b, jax.random.key(0)))  # same dropout for both
    a, b = loss(batch), loss(noisy)
    assert a[0] == pytest.approx(b[0]) and a[1] == b[1] == batch["word_mask"].sum()


def test_parser_fits_trees_and_scores_truncation_honestly(toks, corpus):
    tok, sp = toks["bpe"]
    rng = np.random.default_rng(2)
    rels = ("nsubj", "obj", "nmod:poss", "root")
    examples = []
    for s in corpus.sentences[:4]:
        words = tuple(s[:7])
        heads = tuple(_random_tree(rng, len(words)))
        examples.append(ParsingExample(words, ("X",) * len(words), heads, tuple(rng.choice(rels, len(words)))))
    lm = label_map(examples)
    assert "nmod" in lm and "nmod:poss" not in lm and num_labels("parsing", lm) == len(lm)
    f = encode("parsing", examples, tok, sp, 20, lm)
    assert f.meta["truncated_words"].sum() > 0
    batch = {k: jnp.asarray(v) for k, v in f.arrays.items()}
    h = jnp.asarray(rng.normal(size=(*f.arrays["tokens"].shape, CFG.hidden_size)).astype(np.float32))
    no_dropout = CFG.model_copy(update={"dropout": 0.0})  # memorise exactly: eval = train behaviour
    head, losses = _fit("parsing", h, batch, len(lm), steps=40, lr=3e-2, cfg=no_dropout)
    assert losses[-1] < 0.01 * losses[0], losses
    pred = _check("parsing", head, h, batch)
    N, W = f.arrays["heads"].shape
    assert pred["arc_scores"].shape == pred["rel_by_head"].shape == (N, W, W + 1)
    out = score("parsing", pred, f, examples, lm)
    # every word that fitted and whose head fitted is right; the rest count as errors
    kept = f.meta["kept_words"]
    learnable = sum(sum(hd <= kept[n] for hd in e.heads[: kept[n]]) for n, e in enumerate(examples))
    total = sum(len(e.words) for e in examples)
    assert learnable < total and out["uas"] == pytest.approx(learnable / total) and out["las"] == pytest.approx(out["uas"])
    full = encode("parsing", examples, tok, sp, 128, lm)
    gold = {"heads": full.arrays["heads"], "rels": full.arrays["rels"]}
    assert score("parsing", gold, full, examples, lm) == {"uas": 1.0, "las": 1.0}
