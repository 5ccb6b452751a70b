"""The task registry: one `Task` per kind, and front-end functions that only look the kind up."""

import dataclasses
import inspect
import os
import typing
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from xlplastic.config import ModelConfig, TaskConfig  # noqa: E402
from xlplastic.errors import UserError  # noqa: E402
from xlplastic.tasks import features, heads, readers  # noqa: E402
from xlplastic.tasks.registry import TASKS, Task, get_task  # noqa: E402

FRONT_END = [features.encode, features.score, features.num_labels, heads.create_head, heads.head_loss,
             heads.head_predict, readers.read_task, readers.load_hf_task]


def test_every_configurable_kind_has_a_task():
    assert tuple(TASKS) == typing.get_args(TaskConfig.model_fields["kind"].annotation)
    for kind, task in TASKS.items():
        assert isinstance(task, Task) and task.kind == kind and get_task(kind) is task
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASKS["pos"].kind = "other"


def test_unknown_kind_is_one_line_naming_it_and_the_known_ones():
    with pytest.raises(UserError) as err:
        get_task("srl")
    assert str(err.value) == "task kind 'srl' is unknown; expected one of classification, pos, ner, parsing, qa"
    cfg = ModelConfig(hidden_size=8, num_heads=2, mlp_dim=16, num_layers=1)
    calls = [lambda: features.encode("srl", [], None, None, 8, {}), lambda: features.num_labels("srl", {}),
             lambda: features.score("srl", {}, None, [], {}), lambda: heads.create_head("srl", cfg, 3, 0),
             lambda: heads.head_loss("srl", None, None, {}, None), lambda: heads.head_predict("srl", None, None, {}),
             lambda: readers.read_task("srl", "x"), lambda: readers.load_hf_task("srl", "json")]
    for call in calls:
        with pytest.raises(UserError, match="task kind 'srl' is unknown"):
            call()


def test_front_end_has_no_kind_switch():
    for fn in FRONT_END:
        assert "kind ==" not in inspect.getsource(fn), fn.__name__


def test_kind_tables_come_from_the_registry():
    assert features.KINDS == ("classification", "pos", "ner", "parsing", "qa")
    assert features.HEADLINE_METRIC == {"classification": "accuracy", "pos": "accuracy", "ner": "f1", "parsing": "las",
                                        "qa": "f1"}
    assert features.num_labels("qa", {"a": 0, "b": 1, "c": 2}) == 2
    assert features.num_labels("ner", {"a": 0, "b": 1, "c": 2}) == 3
    with pytest.raises(AttributeError):
        features.NOT_A_TABLE  # noqa: B018


def test_a_new_task_is_one_record(monkeypatch, tmp_path):
    """A kind added to TASKS is served by every front-end function, with the options it asks for."""
    seen = {}

    def read_file(path, *, language=None, max_examples=None):
        return Path(path).read_text(encoding="utf-8").split()[:max_examples]

    def encode(examples, tokenizer, specials, seq_len, label_map, **options):
        seen["encode"] = options
        return features.Features({"tokens": np.zeros((len(examples), seq_len), np.int32)}, {}, len(examples))

    def score(predictions, f, examples, label_map, **options):
        seen["score"] = options
        return {"count": float(len(examples))}

    toy = Task(kind="toy", headline_metric="count", file_format="words", read_file=read_file,
               read_hf_row=lambda row, names: row, encode=encode, new_head=None, loss=None, predict=None,
               score=score, num_labels=lambda label_map: 7)
    monkeypatch.setitem(TASKS, "toy", toy)
    path = tmp_path / "toy.txt"
    path.write_text("a b c\n", encoding="utf-8")
    examples = readers.read_task("toy", str(path), max_examples=2)
    assert examples == ["a", "b"] and features.num_labels("toy", {}) == 7
    f = features.encode("toy", examples, None, None, 5, {})
    assert f.arrays["tokens"].shape == (2, 5) and seen["encode"] == {"doc_stride": 128, "max_query_len": 64}
    assert features.score("toy", {}, f, examples, {}, punct="exclude") == {"count": 2.0}
    assert seen["score"] == {"max_answer_len": 30, "n_best": 20, "punct": "exclude"}
    with pytest.raises(UserError, match="toy.txt: no examples found; expected words for the toy task"):
        readers.read_task("toy", str(path), max_examples=0)
