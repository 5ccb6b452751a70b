"""The task registry: task kind -> `Task`, the one place that knows which kinds exist.

Why: readers, features and heads used to switch on the kind in `if kind == ...` chains, so adding a task
meant edits in three modules. Now each kind is a module in tasks/kinds/ that builds its `Task`, and the
front-end functions (readers.read_task, features.encode, heads.head_loss, ...) look it up here. Adding a
task: its module, plus its line below (and its name in config.TaskConfig.kind, which validates configs).
Kinds build on formats.py, encoding.py, layers.py and metrics.py, never on the front-end modules, so
imports run one way: front ends -> registry -> kinds -> building blocks.
"""

from __future__ import annotations

from xlplastic.errors import UserError
from xlplastic.tasks.kinds import classification, parsing, qa, tagging
from xlplastic.tasks.task import Task

__all__ = ["TASKS", "Task", "get_task"]

TASKS: dict[str, Task] = {t.kind: t for t in (classification.TASK, tagging.POS, tagging.NER, parsing.TASK, qa.TASK)}


def get_task(kind: str) -> Task:
    """The `Task` of `kind`; an unknown kind is a one-line UserError listing the known ones."""
    try:
        return TASKS[kind]
    except (KeyError, TypeError):
        raise UserError(f"task kind {kind!r} is unknown; expected one of {', '.join(TASKS)}") from None
