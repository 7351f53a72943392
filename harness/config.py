"""Config composition: OmegaConf resolvers, the automatic profile, a run's resolved config and method options.

What identifies a run (its hash) is `harness.identity`; the cells of an experiment's grid are `harness.grid`."""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"

def default_data_dir() -> str:
    return os.environ.get("HARNESS_DATA_DIR") or str((PROJECT_ROOT.parent / "shared" / "data").resolve())


def _register_resolvers() -> None:
    resolvers = {
        "mul": lambda a, b: a * b,
        "round": lambda x: int(round(x)),  # an integer knob derived from another (AdaLoRA's target_r)
        "harness_data_dir": default_data_dir,
        "harness_project_root": lambda: str(PROJECT_ROOT),
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


_register_resolvers()


def auto_profile() -> str:
    """`paper` where CUDA is available, `mini` otherwise."""
    import torch

    return "paper" if torch.cuda.is_available() else "mini"


def with_profile(overrides: Iterable[str], announce: bool = True) -> list[str]:
    """Adds `profile=<auto>` to Hydra overrides unless the user named a profile."""
    overrides = list(overrides)
    if any(o.split("=", 1)[0].lstrip("+~") == "profile" for o in overrides):
        return overrides
    chosen = auto_profile()
    if announce:
        why = "a CUDA device is available" if chosen == "paper" else "no CUDA device found"
        print(f"[harness] profile={chosen} chosen automatically ({why}); pass profile=... to choose.", flush=True)
    return overrides + [f"profile={chosen}"]


# Hydra reads and merges every YAML file again on each call (0.2-0.3 s a cell here), and a grid, its status, its
# tables and a sweep's preflight compose the same cells again and again: a composition is kept by its overrides
# while no file under conf/ changed, and each caller gets its own copy. (Interpolations stay unresolved in the
# kept config, so an environment variable or resolver read at access time is read afresh.)
_COMPOSED: "OrderedDict[tuple, DictConfig]" = OrderedDict()
_COMPOSED_KEPT = 1024


def _config_files_signature() -> tuple[int, int]:
    """(number of YAML files under conf/, newest modification time): changes when a config file does."""
    count = newest = 0
    for root, _, files in os.walk(CONFIG_DIR):
        for name in files:
            if name.endswith(".yaml"):
                count += 1
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime_ns)
    return count, newest


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """Composes `conf/config.yaml` with Hydra overrides (the same tree the CLI uses); a fresh copy each call."""
    overrides = list(overrides)
    key = (tuple(overrides), _config_files_signature())
    if key not in _COMPOSED:
        from hydra import compose as hydra_compose
        from hydra import initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            _COMPOSED[key] = hydra_compose(config_name="config", overrides=overrides)
        while len(_COMPOSED) > _COMPOSED_KEPT:
            _COMPOSED.popitem(last=False)
    _COMPOSED.move_to_end(key)
    return copy.deepcopy(_COMPOSED[key])


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


# A method file's keys that say how tables show the method (harness.methods.display), not options of it
DISPLAY_KEYS = ("label", "display_order")


def method_options(cfg: DictConfig) -> dict:
    """The options a method is applied with: its config group less its name and how tables show it."""
    options = resolved(cfg)["method"]
    options.pop("name")
    for shown in DISPLAY_KEYS:  # (a preset's display name, Neat-S, is not an option of the method)
        options.pop(shown, None)
    return options
