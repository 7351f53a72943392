"""How results name their method: the label a table shows, the knobs beside it, the key of its paper row and its
place in a table. Label and place are the method's config file's (`label`, `display_order` in
`conf/method/<name>.yaml`; a preset states its own label, as conf/method/neat_s.yaml's Neat-S); the knobs are the
method's `knob_label`."""

from __future__ import annotations

import functools
from typing import Mapping

UNKNOWN_ORDER = 1000  # a method this checkout does not have: its rows last


def method_info(name: str):
    """The registered method, or None for a result of a method this checkout no longer has."""
    from harness.methods.base import MethodConfigError
    from harness.methods.registry import get

    try:
        return get(name)
    except MethodConfigError:
        return None


@functools.lru_cache(maxsize=None)
def own_display(name: str) -> tuple[str | None, int]:
    """(label, display_order) as the method's own config file states them (conf/method/<name>.yaml): its label
    only where the file states it as a constant (method=peft's follows the tuner's type: None here)."""
    from omegaconf import OmegaConf

    from harness.config import CONFIG_DIR

    path = CONFIG_DIR / "method" / f"{name}.yaml"
    if not path.is_file():
        return None, UNKNOWN_ORDER
    stated = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    label = stated.get("label")
    constant = isinstance(label, str) and "${" not in label
    return (label if constant else None), int(stated.get("display_order", UNKNOWN_ORDER))


def label(method: str, options: Mapping) -> str:
    """The run's label (a preset's, Neat-S, or its method's file's, LoRA), else the method's name (a result
    written before labels were in every method's file, of a method whose file names none)."""
    return options.get("label") or own_display(method)[0] or method


def label_key(method: str, options: Mapping) -> str:
    """The key of a run's paper row: a preset's label, lowercased (neat-s), or the method (lora)."""
    stated = options.get("label")
    return str(stated).lower() if stated and stated != own_display(method)[0] else method


def knob(method: str, options: Mapping) -> str:
    """"r=16", "r=12 d=0.15%", "": the knobs a run trained with (a result's options, the config's dict), as the
    method shows them."""
    info = method_info(method)
    if info is None:
        return ""
    return info.knob_label(info.options_class.as_recorded(dict(options)))


def order(method: str) -> int:
    return own_display(method)[1]


def trains_all_weights(method: str) -> bool:
    info = method_info(method)
    return bool(info is not None and info.trains_all_weights)


def cell_label(cfg) -> str:
    """A composed cell's method as status and plan rows show it: label, knob, and the budget it solves for."""
    from harness.config import method_options

    options = {**method_options(cfg), "label": cfg.method.get("label")}
    text = " ".join(filter(None, [label(cfg.method.name, options), knob(cfg.method.name, options)]))
    budget = {k: v for k, v in (cfg.get("budget") or {}).items() if v is not None}
    return text + (" @ " + ", ".join(f"{k} {v:g}" for k, v in budget.items()) if budget else "")
