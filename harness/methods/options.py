"""A method's options as one typed record (`Options`, a frozen dataclass per method): their names, types, checks
and defaults in one place.

Where a default lives: an option that the method's own config file (`conf/method/<name>.yaml`) sets is a field
with no default here, so the recipe's value (LoRA's r=32, dropout 0.05) is written once, in that file, and a
library call that leaves it out is told so; a field with a default is an option that file does not set (an
optional feature: LoRA+'s ratio, the layers to transform, a task's head). `tests/test_methods.py` checks both
against every config file.

`Options.parse(method, options)` reads the dict a config (or a library call) gives: an unknown key, a missing
required one or a value its field's `check` refuses is a `MethodConfigError` naming the method and the option.
Written by hand: omegaconf's structured configs would check the types too, but only inside a composed config,
and a library call (`harness.methods.apply(model, "lora", r=4, ...)`) has none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from harness.methods.errors import MethodConfigError


@dataclass(frozen=True, kw_only=True)
class Options:
    """A method's options; this base has none (full fine-tuning takes none). Subclasses are frozen, keyword-only
    dataclasses (`@dataclass(frozen=True, kw_only=True)`)."""

    @classmethod
    def required(cls) -> set[str]:
        """The options with no default here: their values are the config file's."""
        return {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}

    @classmethod
    def parse(cls, method: str, options: Mapping[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise MethodConfigError(f"method={method}: unknown option(s) {unknown}; known options are {sorted(known)}")
        missing = sorted(cls.required() - set(options))
        if missing:
            raise MethodConfigError(f"method={method}: option(s) {missing} not given; a run takes them from "
                                    f"conf/method/{method}.yaml, a library call must name them")
        parsed = cls(**options)
        parsed.check(method)
        return parsed

    @classmethod
    def as_recorded(cls, options: Mapping[str, Any]):
        """The options a result recorded, for showing it (a table's knob label): the keys this version knows, any
        other left out, an option missing from an older result None; no check (the run has happened)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{name: None for name in cls.required()}, **{k: v for k, v in options.items() if k in known}})

    def check(self, method: str) -> None:
        """Raises MethodConfigError for a value that cannot work (overridden per method); default: none."""

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The options as a config states them (saved beside an adapter, read back by `parse`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True)
class HeadOptions(Options):
    """The option of every method that trains a task's new head with it (`Method.with_head` fills it in)."""

    modules_to_save: list[str] | None = None


def positive_int(method: str, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MethodConfigError(f"method={method}: {key} must be a positive integer, got {value!r}")
    return value


def one_of(method: str, key: str, value: Any, allowed) -> Any:
    if value not in allowed:
        raise MethodConfigError(f"method={method}: {key} must be one of {list(allowed)}, got {value!r}")
    return value


def listed(value) -> list | None:
    """A list option as peft takes it: None for none given (an empty list too)."""
    return list(value) if value else None
