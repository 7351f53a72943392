"""Public method API, usable on any transformers model.

    model = harness.methods.apply(model, "milora", r=16, alpha=16, target_modules=["q_proj", "v_proj"])
    harness.methods.trainable_parameters(model)   # one counting function for every method
    plain = harness.methods.merge(model)           # adapters folded into plain weights

Each method is one module registering a `Method` (see `base.py` for the hooks); every module here is imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

import importlib
import pkgutil

from harness.methods.base import METHOD_ATTR, Method, MethodConfigError
from harness.methods.registry import get, names

# Every module of this package registers its methods on import: a new method is a new module (and its config).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

SAVED_METHOD_FILE = "harness_method.json"

__all__ = ["apply", "validate", "trainable_parameters", "total_parameters", "merge", "save", "load", "get", "names",
           "method_of", "Method", "MethodConfigError"]


def present_modules(model: nn.Module, names) -> list[str]:
    """Those of `names` that name a module of `model` (a task lists its head's possible names)."""
    last_parts = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    return [n for n in names or () if n in last_parts]


def apply(model: nn.Module, name: str, head_modules=(), structure_only: bool = False, **options: Any) -> nn.Module:
    """Adds method `name` to `model` (options as in `conf/method/<name>.yaml`); returns the model to train.

    `head_modules`: the task's new head (e.g. `classifier`), trained with every method; how is the method's
    business (`Method.with_head`). `structure_only`: the same parameters without a costly initialisation
    (`Method.apply_structure`), for a process that receives the values from another."""
    method = get(name)
    options = method.with_head(dict(options), present_modules(model, head_modules))
    adapted = (method.apply_structure if structure_only else method.apply)(model, **options)
    setattr(adapted, METHOD_ATTR, name)
    setattr(adapted, "_harness_method_options", dict(options))
    return adapted


def validate(model: nn.Module, name: str, head_modules=(), **options: Any) -> None:
    """Checks method `name` with these options against `model` (the architecture on the meta device) as
    `apply` would set it up; raises MethodConfigError."""
    method = get(name)
    method.validate(model, **method.with_head(dict(options), present_modules(model, head_modules)))


def method_of(model: nn.Module) -> Method:
    name = getattr(model, METHOD_ATTR, None)
    if name is None:
        raise MethodConfigError("this model has no method applied by harness.methods.apply")
    return get(name)


def _unique_parameters(model: nn.Module, trainable_only: bool):
    seen = set()
    for p in model.parameters():
        if trainable_only and not p.requires_grad:
            continue
        if id(p) in seen:  # tied weights (e.g. embeddings and LM head) count once
            continue
        seen.add(id(p))
        yield p


def trainable_parameters(model: nn.Module, within: tuple[str, ...] | None = None) -> int:
    """Trainable parameter count, the same function for every method (no method reports its own).
    `within`: only parameters under modules of these names (e.g. ("classifier",) for a task's head)."""
    if within is not None:
        if not within:
            return 0
        inside = {id(p) for n, p in model.named_parameters() if any(m in n.split(".") for m in within)}
        return sum(p.numel() for p in _unique_parameters(model, trainable_only=True) if id(p) in inside)
    return sum(p.numel() for p in _unique_parameters(model, trainable_only=True))


def total_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in _unique_parameters(model, trainable_only=False))


def merge(model: nn.Module) -> nn.Module:
    """The model with its method folded into plain weights (unchanged for methods that add nothing)."""
    return method_of(model).merge(model)


def save(model: nn.Module, directory: str | Path) -> Path:
    """Saves what the method trained (adapter, or the whole model for full fine-tuning) and its name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    method_of(model).save(model, directory)
    (directory / SAVED_METHOD_FILE).write_text(
        json.dumps({"method": getattr(model, METHOD_ATTR), "options": getattr(model, "_harness_method_options", {})},
                   default=list)
    )
    return directory


def load(base_model: nn.Module, directory: str | Path) -> nn.Module:
    """Loads a directory written by `save` onto the (original, untouched) base model."""
    directory = Path(directory)
    meta_file = directory / SAVED_METHOD_FILE
    if not meta_file.is_file():
        raise MethodConfigError(f"{directory} has no {SAVED_METHOD_FILE}; it was not written by harness.methods.save")
    meta = json.loads(meta_file.read_text())
    model = get(meta["method"]).load(base_model, directory, meta.get("options", {}))
    setattr(model, METHOD_ATTR, meta["method"])
    setattr(model, "_harness_method_options", meta.get("options", {}))
    return model
