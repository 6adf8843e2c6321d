"""Tasks: everything task-specific (options, data, adapter, evaluator, records, metrics, gates, demo)
lives in one module per task; the runner is one loop for every task and never asks which one it runs.

`register_task` adds a task (a fourth one is one module and one call); `get_task` and `list_tasks`
find them. Importing this package stays light (no torch), because the pytest plugin reads the option
declarations when pytest starts.
"""

from __future__ import annotations

import difflib
from typing import Any

from visionstress.tasks import common  # noqa: F401  (the run options every task shares)

_TASKS: dict[str, Any] = {}


def register_task(task: Any) -> Any:
    """Add a task object (see visionstress.tasks.base.Task) under its `name`; a duplicate name raises."""
    if task.name in _TASKS and _TASKS[task.name] is not task:
        raise ValueError(f"a task named {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    _TASKS.pop(name, None)


def get_task(name: str) -> Any:
    """The registered task called `name`; an unknown name lists the known ones."""
    try:
        return _TASKS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_TASKS), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"unknown task {name!r}: expected one of {', '.join(_TASKS)}{hint}") from None


def list_tasks() -> list[str]:
    return list(_TASKS)


from visionstress.tasks import classification, detection, segmentation  # noqa: E402,F401  (the built-in tasks)
