"""Public method API, usable on any transformers model.

    adapted = harness.methods.apply(model, "milora", r=16, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"])
    harness.methods.trainable_parameters(adapted.model)   # one counting function for every method
    plain = harness.methods.merge(adapted)                 # adapters folded into plain weights

`apply` returns the run's handle (`Adapted`: the model, its method, its typed options and the method's state for
this run); the options a method's config file sets must be given (`harness.methods.options`: their defaults live
in `conf/method/<name>.yaml`, nowhere else);
each method is one module registering a `Method` (see `base.py` for the hooks); every module here is imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

import importlib
import pkgutil

from harness.methods.base import Adapted, Method, MethodConfigError
from harness.methods.registry import get, names

# Every module of this package registers its methods on import: a new method is a new module (and its config).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

SAVED_METHOD_FILE = "harness_method.json"

__all__ = ["apply", "validate", "trainable_parameters", "total_parameters", "merge", "save", "load", "get", "names",
           "Adapted", "Method", "MethodConfigError"]


def present_modules(model: nn.Module, names) -> list[str]:
    """Those of `names` that name a module of `model` (a task lists its head's possible names)."""
    last_parts = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    return [n for n in names or () if n in last_parts]


def apply(model: nn.Module, name: str, head_modules=(), structure_only: bool = False, **options: Any) -> Adapted:
    """Adds method `name` to `model` (options as in `conf/method/<name>.yaml`); returns the run's handle, whose
    `model` is the model to train.

    `head_modules`: the task's new head (e.g. `classifier`), trained with every method; how is the method's
    business (`Method.with_head`). `structure_only`: the same parameters without a costly initialisation
    (`Method.apply_structure`), for a process that receives the values from another."""
    method = get(name)
    parsed = method.parse_options(method.with_head(dict(options), present_modules(model, head_modules)))
    state: dict = {}
    model = (method.apply_structure if structure_only else method.apply)(model, state, parsed)
    return Adapted(model, method, parsed, state)


def validate(model: nn.Module, name: str, head_modules=(), **options: Any) -> None:
    """Checks method `name` with these options against `model` (the architecture on the meta device) as
    `apply` would set it up; raises MethodConfigError."""
    method = get(name)
    method.validate(model, method.parse_options(method.with_head(dict(options), present_modules(model, head_modules))))


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


def merge(adapted: Adapted) -> nn.Module:
    """The model with its method folded into plain weights (unchanged for methods that add nothing)."""
    return adapted.method.merge(adapted)


def save(adapted: Adapted, directory: str | Path) -> Path:
    """Saves what the method trained (adapter, or the whole model for full fine-tuning) and its name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    adapted.method.save(adapted, directory)
    (directory / SAVED_METHOD_FILE).write_text(
        json.dumps({"method": adapted.name, "options": adapted.options.as_dict()}, default=list))
    return directory


def load(base_model: nn.Module, directory: str | Path) -> Adapted:
    """Loads a directory written by `save` onto the (original, untouched) base model."""
    directory = Path(directory)
    meta_file = directory / SAVED_METHOD_FILE
    if not meta_file.is_file():
        raise MethodConfigError(f"{directory} has no {SAVED_METHOD_FILE}; it was not written by harness.methods.save")
    meta = json.loads(meta_file.read_text())
    method, state = get(meta["method"]), {}
    try:
        options = method.parse_options(meta.get("options", {}))
    except MethodConfigError as exc:
        raise MethodConfigError(f"{meta_file}: {exc}") from None
    return Adapted(method.load(base_model, directory, options, state), method, options, state)
