"""Bilingual-factor knobs (Conneau, Wu et al., 2020): language-specific parameters (Sep), vocabulary
layouts (joint / per-language, shared / no anchors), random-word replacement within one language,
dictionary code-switching (extra anchors), and a tiny bilingual run with all of them together."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xlplastic import model as model_lib
from xlplastic.config import CodeSwitchConfig, ModelConfig, TokenizerConfig, validate
from xlplastic.data.codeswitch import code_switch
from xlplastic.data.tokenizers import special_tokens, train_tokenizer
from xlplastic.data.vocabulary import Vocabulary, for_language, load_vocabulary
from xlplastic.errors import UserError
from xlplastic.forgetting import redraw_groups
from xlplastic.groups import label_params
from xlplastic.masking import mask_tokens
from xlplastic.optim import trainable_groups

SEP = dict(hidden_size=32, num_layers=3, num_heads=2, mlp_dim=64, max_positions=16, dropout=0.0,
           attention_dropout=0.0, languages=["a", "b"])


def _model(**sep):
    cfg = ModelConfig(**SEP, separate=sep)
    return cfg, model_lib.create(cfg, 50, seed=0)


# ---------------------------------------------------------------------------------------------
# Sep: language-specific copies


def test_separate_copies_and_labels():
    cfg, m = _model(embeddings=True, layers=2)
    _, params = model_lib.split(m)
    assert "token_embed" not in params and "position_embed" not in params
    assert set(params["lang_a"]) == {"token_embed", "position_embed", "layer_0", "layer_1"}
    assert "layer_0" not in params and "layer_2" in params  # only the top layer is shared
    labels = label_params(params)
    assert labels["lang_b"]["token_embed"] == "token_embedding@b"
    assert labels["lang_a"]["layer_1"]["mlp"]["in_kernel"] == "body@a"
    assert labels["layer_2"]["mlp"]["in_kernel"] == "body"


def test_separate_rows_use_their_own_language():
    """Changing language b's copies leaves every language-a row's output exactly as it was."""
    cfg, m = _model(embeddings=True, layers=1)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 10), 5, 50)
    lengths = jnp.full((4,), 10, jnp.int32)
    lang = jnp.array([0, 1, 0, 1])

    def run(mod):
        h = mod.encode(tokens, lengths, lang_B=lang)
        return h, mod.mlm_logits(h[:, :3], lang)

    h0, l0 = run(m)
    graphdef, state = nnx.split(m)
    params = nnx.to_pure_dict(state)
    params["lang_b"] = jax.tree.map(lambda x: x + 0.5, params["lang_b"])
    nnx.replace_by_pure_dict(state, params)
    h1, l1 = run(nnx.merge(graphdef, state))
    a, b = np.array([0, 2]), np.array([1, 3])
    np.testing.assert_array_equal(np.asarray(h0)[a], np.asarray(h1)[a])
    np.testing.assert_array_equal(np.asarray(l0)[a], np.asarray(l1)[a])
    assert np.abs(np.asarray(h0)[b] - np.asarray(h1)[b]).max() > 1e-3
    with pytest.raises(ValueError, match="lang_B"):
        m.encode(tokens, lengths)


def test_separate_selectors_forgetting_and_task_freezing():
    cfg, m = _model(embeddings=True, layers=1)
    _, params = model_lib.split(m)
    labels = label_params(params)
    out = redraw_groups(params, labels, ("token_embedding",), jax.random.PRNGKey(3), rule="normal", std=0.02, pad_id=1)
    for l in ("lang_a", "lang_b"):  # the plain group name covers every language's copy
        assert not np.array_equal(out[l]["token_embed"], params[l]["token_embed"])
        assert np.all(np.asarray(out[l]["token_embed"])[1] == 0)
        np.testing.assert_array_equal(out[l]["position_embed"], params[l]["position_embed"])
    only_b = redraw_groups(params, labels, ("token_embedding@b",), jax.random.PRNGKey(3), rule="normal", std=0.02, pad_id=1)
    np.testing.assert_array_equal(only_b["lang_a"]["token_embed"], params["lang_a"]["token_embed"])
    raw = {"model": {**SEP, "separate": {"embeddings": True, "layers": 1}}}
    pre = validate({**raw, "train": {"trainable": ["body", "token_embedding@a"]}})
    assert trainable_groups(pre, labels) >= {"body", "body@a", "body@b", "token_embedding@a"}
    assert "token_embedding@b" not in trainable_groups(pre, labels)
    task = validate({**raw, "task": {"name": "t"}, "train": {"trainable": ["body", "task_head"]}})
    assert {l for l in trainable_groups(task, labels) if "@" in l} == set()  # copies frozen in tasks
    with pytest.raises(UserError, match="unknown parameter group"):
        trainable_groups(validate({**raw, "train": {"trainable": ["bodyy"]}}), labels)


def test_separate_needs_languages():
    with pytest.raises(UserError, match="at least two languages"):
        validate({"model": {"separate": {"embeddings": True}}})


# ---------------------------------------------------------------------------------------------
# Vocabulary layouts

A_TEXT = ["the cat sat on the mat", "a dog and a cat", "the mat is red"] * 20
B_TEXT = ["le chat est sur le mat", "un chien et un chat", "le mat est rouge"] * 20


@pytest.fixture(scope="module")
def toks():
    cfg = TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1)
    return train_tokenizer(A_TEXT, cfg), train_tokenizer(B_TEXT, cfg)


def test_vocabulary_shared_unions_by_string(toks, tmp_path):
    ta, tb = toks
    v = Vocabulary.build({"a": ta, "b": tb}, "shared")
    strings = set(ta.get_vocab()) | set(tb.get_vocab())
    assert v.size == len(strings)
    shared = v.shared_ids()
    assert len(shared) > 0 and all(v.tokens[i] in ta.get_vocab() and v.tokens[i] in tb.get_vocab() for i in shared)
    # the same string ("mat", "chat"...) gets the same global id from either language's tokenizer
    ea, eb = v.for_language("a").encode("mat"), v.for_language("b").encode("mat")
    assert ea.ids == eb.ids
    # specials are shared and found through the vocabulary as through a tokenizer
    sp = special_tokens(v)
    assert (sp.pad, sp.mask) == (ta.token_to_id("<pad>"), ta.token_to_id("<mask>"))
    loaded = load_vocabulary(v.save(tmp_path))
    assert loaded.to_str() == v.to_str() and loaded.size == v.size


def test_vocabulary_no_anchors(toks):
    ta, tb = toks
    v = Vocabulary.build({"a": ta, "b": ta}, "none")  # joint tokenizer, ids made language-specific
    assert len(v.shared_ids()) == 0
    n_special = len(special_tokens(ta).all_ids)
    assert v.size == n_special + 2 * (ta.get_vocab_size() - n_special)
    ids_a, ids_b = set(v.language_ids("a")), set(v.language_ids("b"))
    assert ids_a & ids_b == set(range(n_special))
    ea, eb = v.for_language("a").encode("the cat"), v.for_language("b").encode("the cat")
    assert len(ea.ids) == len(eb.ids) and not set(ea.ids) & set(eb.ids)
    assert for_language(ta, "b") is ta  # a plain tokenizer serves every language
    with pytest.raises(UserError, match="one language at a time"):
        v.encode_batch(["x"])
    with pytest.raises(UserError, match="no tokenizer"):
        v.for_language("zz")


# ---------------------------------------------------------------------------------------------
# Masking within one language, code-switching


def test_random_replacement_within_language():
    table = np.zeros((2, 10), np.int32)
    table[0, :5] = np.arange(10, 15)
    table[1, :10] = np.arange(20, 30)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (64, 40), 10, 30)
    lang = jnp.arange(64) % 2
    out = mask_tokens(jax.random.PRNGKey(1), tokens, special_ids=(0, 1, 2, 3, 4), mask_id=4, vocab_size=30,
                      mask_token_prob=0.0, random_token_prob=1.0, lang_B=lang, random_ids_LxM=table,
                      random_counts_L=np.array([5, 10], np.int32))
    new = np.take_along_axis(np.asarray(out.inputs_BxT), np.asarray(out.positions_BxP), 1)
    w = np.asarray(out.weights_BxP) > 0
    lang_np = np.asarray(lang)[:, None].repeat(new.shape[1], 1)
    got0, got1 = set(new[w & (lang_np == 0)]), set(new[w & (lang_np == 1)])
    assert got0 == set(range(10, 15)) and got1 == set(range(20, 30))  # every id of its own language, no other


def _dictionary(tmp_path: Path) -> Path:
    p = tmp_path / "dict.txt"
    p.write_text("cat chat\ndog chien\nmat tapis\nred rouge\nred rougee\n", encoding="utf-8")
    return p


def test_code_switch_rate_cap_and_determinism(tmp_path):
    d = _dictionary(tmp_path)
    texts = ["the cat sat on the mat", "a dog and a red cat"] * 200
    words = sum(len(t.split()) for t in texts)
    known = sum(w in {"cat", "dog", "mat", "red"} for t in texts for w in t.split())

    def switched(**kw):
        cfg = CodeSwitchConfig(dictionary=str(d), **kw)
        out = list(code_switch(iter(texts), cfg))
        return out, sum(a != b for x, y in zip(texts, out) for a, b in zip(x.split(), y.split()))

    out, n = switched(rate=1.0, max_share=1.0, block_words=64)
    assert n == known and "rouge" in " ".join(out) and "rougee" in " ".join(out)  # both translations are used
    _, n = switched(rate=0.3, max_share=1.0, block_words=64)
    assert abs(n / known - 0.3) < 0.06
    out_c, n = switched(rate=1.0, max_share=0.15, block_words=100)
    assert n <= 0.15 * words and n > 0.12 * words  # the cap binds per block of ~100 words
    assert switched(rate=0.3, max_share=0.15, block_words=100)[0] == switched(rate=0.3, max_share=0.15, block_words=100)[0]
    rev = list(code_switch(iter(["le chat rouge"]), CodeSwitchConfig(dictionary=str(d), reverse=True, rate=1.0, max_share=1.0)))
    assert rev == ["le cat red"]


# ---------------------------------------------------------------------------------------------
# All together: a tiny bilingual run


def test_bilingual_run_all_knobs(tmp_path, root):
    """Per-language tokenizers without anchors, Sep Emb + L1, language embeddings, random replacement
    within one language and code-switching, on two lab languages: it trains, writes its vocabulary, and
    each language's rows only ever reach that language's copies."""
    from xlplastic.run import run
    from xlplastic.stages import materialize_lab

    raw = {
        "name": "bi",
        "lab": {"words": 120, "sentences": 600, "test_sentences": 40,
                "languages": [{"name": "syn"}, {"name": "half", "permute": 0.5, "seed": 2}]},
        "model": {**SEP, "max_positions": 32, "num_languages": 2, "languages": ["syn", "half"],
                  "separate": {"embeddings": True, "layers": 1}},
        "data": {"corpora": [{"language": "syn", "kind": "text", "path": "syn.train.txt",
                              "code_switch": {"dictionary": "dict.syn-half.0-5000.txt", "rate": 0.3}},
                             {"language": "half", "kind": "text", "path": "half.train.txt"}],
                 "tokenizer": {"kind": "bpe", "vocab_size": 200, "per_language": True, "anchors": "none"},
                 "seq_len": 32, "eval_sequences": 4, "random_within_language": True},
        "train": {"steps": 6, "batch_size": 8, "progress": False, "eval_batches": 1},
        "mesh": {"data": 2, "fsdp": 2, "tensor": 2},
    }
    cfg = materialize_lab(validate(raw), tmp_path)
    result = run(cfg, tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "vocabulary.json").read_text())
    assert meta["anchors"] == "none" and meta["languages"] == ["syn", "half"]
    assert np.isfinite(result.results["final"]["loss"])
    vocab = load_vocabulary(tmp_path / "run")
    assert len(vocab.shared_ids()) == 0


def test_lab_domains_write_other_domain_corpora(tmp_path):
    """`domains` gives a language more corpora with other topic mixes (the Wiki-CC setting): same words,
    different topics, so a model pretrained on it sees the language in another domain."""
    from xlplastic.data.lab import write_lab

    cfg = {"words": 100, "sentences": 3000, "test_sentences": 20,
           "languages": [{"name": "syn"}, {"name": "half", "permute": 0.5, "domains": {"cc": [0, 0, 0, 1]}}]}
    files = write_lab(cfg, tmp_path)
    cc = files["half"]["train_cc"].read_text().splitlines()
    base = files["half"]["train"].read_text().splitlines()
    assert len(cc) == 3000 and cc != base
    from collections import Counter

    def dist(lines):
        c = Counter(w for l in lines for w in l.split())
        n = sum(c.values())
        return {w: k / n for w, k in c.items()}

    def tv(p, q):
        return 0.5 * sum(abs(p.get(w, 0) - q.get(w, 0)) for w in set(p) | set(q))

    assert len(set(dist(cc)) & set(dist(base))) > 0.6 * len(dist(cc))  # the same language's words...
    assert tv(dist(cc), dist(base)) > 2 * tv(dist(base[:1500]), dist(base[1500:]))  # ...in another domain
    with pytest.raises(UserError, match="domains.cc"):
        write_lab({**cfg, "languages": [{"name": "syn"}, {"name": "half", "domains": {"cc": [1, 2]}}]}, tmp_path / "bad")
