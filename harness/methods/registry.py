"""Name -> Method registry. A method module registers itself with `@register("name")`."""

from __future__ import annotations

from harness.methods.base import Method, MethodConfigError

_METHODS: dict[str, Method] = {}


def register(name: str):
    def decorator(cls: type[Method]) -> type[Method]:
        cls.name = name
        _METHODS[name] = cls()
        return cls

    return decorator


def get(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise MethodConfigError(f"unknown method {name!r}; known methods: {sorted(_METHODS)}") from None


def names() -> list[str]:
    return sorted(_METHODS)
