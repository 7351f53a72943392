"""Tasks: where training examples and test sets come from. One module per task, named as the task config.

A task module provides `training_records(task_cfg, seed)`, `test_sets(task_cfg)`, `tokenize(...)` and
`PROTOCOLS`: protocol name -> the module that scores it on this task, whose
`evaluate(model, tokenizer, test_sets, protocol_cfg, progress, task_cfg=None)` returns (metrics, predictions)
per test set. Adding a task is
a module here plus `conf/task/<name>.yaml`; nothing else changes.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def task_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"harness.tasks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"harness.tasks.{name}":
            raise
        raise ValueError(f"task.name={name!r}: no module harness/tasks/{name}.py") from None


def protocol_module(task: ModuleType, task_name: str, protocol: str) -> ModuleType:
    protocols = getattr(task, "PROTOCOLS", {})
    if protocol not in protocols:
        raise ValueError(f"protocol={protocol!r} is not defined for task {task_name!r}; it has {sorted(protocols)}")
    return importlib.import_module(protocols[protocol])
