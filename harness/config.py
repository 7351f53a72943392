"""Config composition: OmegaConf resolvers, the automatic profile, a run's resolved config and method options.

What identifies a run (its hash) is `harness.identity`; the cells of an experiment's grid are `harness.grid`."""

from __future__ import annotations

import os
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


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """Composes `conf/config.yaml` with Hydra overrides (the same tree the CLI uses)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def method_options(cfg: DictConfig) -> dict:
    """The options a method is applied with: its config group less its name and display label."""
    options = resolved(cfg)["method"]
    options.pop("name")
    options.pop("label", None)  # a preset's display name (Neat-S), not an option of the method
    return options
