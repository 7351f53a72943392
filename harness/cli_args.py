"""The command line of the tools that act on a finished run (`harness.evaluate`, `harness.forgetting`, AlpacaEval's
judge): the run as a positional argument, then overrides in Hydra's own grammar, parsed by Hydra's parser, so that
quoting, lists, dicts, `+key=` and `~key` mean what they mean on `harness.run`'s command line.

These tools are not Hydra apps: what they change is a finished run's stored config, not a composition of
`conf/`, and they take the run as a positional argument, which a Hydra app cannot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError


@dataclass
class CommandLine:
    """Positional arguments (a run id, an adapter folder) and the parsed overrides, in order."""

    positional: list[str]
    overrides: list = field(default_factory=list)  # hydra.core.override_parser.types.Override

    def take(self, key: str, default: Any = None) -> Any:
        """The value of `key=` (removed from the overrides: an option of the tool, not of the run's config)."""
        for override in list(self.overrides):
            if override.key_or_group == key:
                self.overrides.remove(override)
                return override.value()
        return default

    def lines(self) -> list[str]:
        """The remaining overrides as written (for a composition, `harness.grid.experiment_cells`)."""
        return [o.input_line for o in self.overrides]


def parse(args: list[str]) -> CommandLine:
    """Splits `args` into positional arguments (no `=`) and overrides, the latter parsed by Hydra; a malformed
    override is a ConfigError naming it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    positional = [a for a in args if "=" not in a and not a.startswith("~")]
    written = [a for a in args if a not in positional]
    try:
        overrides = OverridesParser.create().parse_overrides(written)
    except OverrideParseException as exc:
        raise ConfigError(f"{exc}".splitlines()[0]) from None
    return CommandLine(positional, list(overrides))


def apply(cfg: DictConfig, overrides: list, groups: dict | None = None) -> DictConfig:
    """`cfg` changed by the overrides as Hydra changes a composition: `key=value` sets an existing key (merging
    a dict into a dict), `+key=value` adds one, `++key=value` either, `~key` deletes; a key in `groups` (a config
    group such as `protocol`) is replaced whole by `groups[key](value)`."""
    for override in overrides:
        key = override.key_or_group
        exists = OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT
        if override.is_delete():
            if not exists:
                raise ConfigError(f"~{key}: the run's config has no {key}")
            parent, _, leaf = key.rpartition(".")
            (OmegaConf.select(cfg, parent) if parent else cfg).pop(leaf)
        elif groups and key in groups:
            OmegaConf.update(cfg, key, groups[key](override.value()), merge=False, force_add=True)
        elif override.is_add() and exists:
            raise ConfigError(f"{override.input_line}: the run's config has {key} already; set it without the +")
        elif not (exists or override.is_add() or override.is_force_add()):
            raise ConfigError(f"{override.input_line}: the run's config has no {key} (add it with +{key}=...)")
        else:
            OmegaConf.update(cfg, key, override.value(), merge=True, force_add=True)
    return cfg


_ABSENT = object()
