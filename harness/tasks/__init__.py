"""Tasks: where training examples and test sets come from. One module per task, named as the task config.

A task module provides `training_records(task_cfg, seed)`, `test_sets(task_cfg)`, `encoder(task_cfg,
processor)` (record -> training example) and
`PROTOCOLS`: protocol name -> the module that scores it on this task, whose
`evaluate(model, tokenizer, test_sets, protocol_cfg, progress, task_cfg=None)` returns (metrics, predictions)
per test set. Optional: `model_head(task_cfg)` (a classifier instead of a causal LM: {"kind":
"sequence_classification" | "image_classification", "num_labels"}), `HEAD_MODULES` (that head's module names,
trained with every method and counted apart), `collator(processor, task_cfg)` (batches of the task's examples).
Adding a task is a module here plus `conf/task/<name>.yaml`; nothing else changes.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from harness.errors import ConfigError


def task_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"harness.tasks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"harness.tasks.{name}":
            raise
        raise ConfigError(f"task.name={name!r}: no module harness/tasks/{name}.py") from None


def protocol_module(task: ModuleType, task_name: str, protocol: str) -> ModuleType:
    protocols = getattr(task, "PROTOCOLS", {})
    if protocol not in protocols:
        raise ConfigError(f"protocol={protocol!r} is not defined for task {task_name!r}; it has {sorted(protocols)}")
    return importlib.import_module(protocols[protocol])


def text_encoder(tokenize, task_cfg, tokenizer):
    """The encoder of a text task from its `tokenize(record, tokenizer, cutoff_len, train_on_inputs,
    add_eos_token)` and the task config's truncation and masking choices."""
    cutoff, inputs, eos = int(task_cfg["cutoff_len"]), bool(task_cfg["train_on_inputs"]), bool(task_cfg["add_eos_token"])
    return lambda record: tokenize(record, tokenizer, cutoff, inputs, eos)
