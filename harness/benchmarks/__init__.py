"""Benchmarks: one package each (commonsense, math, glue, image), found by the task config's `name`.

    benchmark = harness.benchmarks.get(cfg.task.name)
    benchmark.training_records(cfg.task, seed); benchmark.test_sets(cfg.task)
    benchmark.scorer(cfg.protocol.name).evaluate(model, processor, test_sets, cfg.protocol, cfg.task)

Each package registers its `Benchmark` with `@register`; the packages are discovered here, so a new benchmark
is its package plus `conf/task/<name>.yaml` and nothing else changes. The interface is `base.Benchmark`.
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.benchmarks.base import Benchmark, Scorer
from harness.errors import ConfigError

_BENCHMARKS: dict[str, Benchmark] = {}


def register(cls: type[Benchmark]) -> type[Benchmark]:
    _BENCHMARKS[cls.name] = cls()
    return cls


_discovered = False


def _discover() -> None:
    """Imports every benchmark package once (a package imported directly before, e.g. by a test, registers
    itself alone: the registry not being empty does not mean it is complete)."""
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")
    _discovered = True


def get(name: str) -> Benchmark:
    _discover()
    if name not in _BENCHMARKS:
        raise ConfigError(f"task.name={name!r}: no benchmark of that name; known: {sorted(_BENCHMARKS)}",
                          "a benchmark is a package under harness/benchmarks/ with conf/task/<name>.yaml")
    return _BENCHMARKS[name]


def names() -> list[str]:
    _discover()
    return sorted(_BENCHMARKS)


__all__ = ["Benchmark", "Scorer", "get", "names", "register"]
