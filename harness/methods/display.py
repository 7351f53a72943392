"""How results name their method: the label a table shows, the knobs beside it, the key of its paper row and its
place in a table, all declared by the method (`Method.label`, `knob_label`, `display_order`)."""

from __future__ import annotations

from typing import Mapping


def method_info(name: str):
    """The registered method, or a stand-in for a result of a method this checkout no longer has."""
    from harness.methods.base import MethodConfigError
    from harness.methods.registry import get

    try:
        return get(name)
    except MethodConfigError:
        return type("Unknown", (), {"label": name, "display_order": 1000, "trains_all_weights": False,
                                    "knob_label": staticmethod(lambda options: "")})()


def label(method: str, options: Mapping) -> str:
    """A preset's label (Neat-S) or the method's own (LoRA)."""
    return options.get("label") or method_info(method).label


def label_key(method: str, options: Mapping) -> str:
    """The key of a run's paper row: the preset's label, lowercased (neat-s), or the method (lora)."""
    return str(options["label"]).lower() if options.get("label") else method


def knob(method: str, options: Mapping) -> str:
    """"r=16", "r=12 d=0.15%", "": the knobs a run trained with, as the method shows them."""
    return method_info(method).knob_label(dict(options))


def order(method: str) -> int:
    return method_info(method).display_order
