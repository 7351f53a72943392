"""Config composition: OmegaConf resolvers, the automatic profile, and the run identity (hash)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"

# Keys that say where things go or how they are shown, not what is computed: they stay out of the run hash so
# that a result is found again from another checkout, data location or results folder.
NON_SEMANTIC_KEYS = ("run", "logging", "data_dir", "grid", "grid_cross", "profile_overrides", "table", "experiment_name",
                     "profile", "launcher", "sharding", "seeds", "paper_seeds", "tune_lr",
                     "lr_point")
# Where the data and weights are: replaced in the run hash by what they hold (`inputs`, harness.provenance).
LOCATION_TASK_KEYS = ("data_dir", "train_file", "test_file", "test_files", "paper_train_file")
NON_SEMANTIC_TASK_KEYS = (*LOCATION_TASK_KEYS, "missing_ok")


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


def _drop_paths(node) -> None:
    """Removes every `path` key (a location: its content enters the hash through `inputs`)."""
    if isinstance(node, dict):
        node.pop("path", None)
        for value in node.values():
            _drop_paths(value)


def inputs(cfg: DictConfig) -> dict[str, str]:
    """What the run reads, by content: role -> sha256 / hub revision / package version (harness.provenance)."""
    from harness import benchmarks
    from harness.models import weight_sources
    from harness.provenance import fingerprint

    data = fingerprint(benchmarks.get(cfg.task.name).data_sources(cfg.task))
    model = fingerprint(weight_sources(cfg.model))
    return {**{f"data/{k}": v for k, v in data.items()}, **{f"model/{k}": v for k, v in model.items()}}


def behaviour_versions(cfg: DictConfig) -> dict[str, int]:
    """The code's declared behaviour versions for this run: a fix that changes what a run computes bumps one,
    so results made before it are never reused (README, "For developers")."""
    from harness import benchmarks, methods, train

    benchmark = benchmarks.get(cfg.task.name)
    return {"method": methods.get(cfg.method.name).behaviour_version, "task": benchmark.behaviour_version,
            "protocol": benchmark.scorer(cfg.protocol.name).behaviour_version, "training": train.BEHAVIOUR_VERSION}


def semantic_config(cfg: DictConfig, with_inputs: bool = True) -> dict:
    """The part of the resolved config that determines the result (what the run id hashes): the config less
    where things are and how they are shown, plus the content of what the run reads and the code's behaviour
    versions."""
    from harness import benchmarks

    data = resolved(cfg)
    data["task"] = benchmarks.get(cfg.task.name).semantic_task(data["task"])
    for key in NON_SEMANTIC_KEYS:
        data.pop(key, None)
    for key in NON_SEMANTIC_TASK_KEYS:
        data.get("task", {}).pop(key, None)
    data.get("protocol", {}).pop("description", None)  # a caption's words
    data.get("training", {}).pop("source", None)       # where the recipe comes from: a footnote's words
    _drop_paths(data.get("task"))
    _drop_paths(data.get("model"))
    if not any(v is not None for v in (data.get("budget") or {}).values()):
        data.pop("budget", None)  # no budget: the run is what it was before budgets existed
    if with_inputs:  # (without: a config-only identity, for checks that must not read the data or the hub)
        data["inputs"] = inputs(cfg)
    data["behaviour"] = behaviour_versions(cfg)
    return data


def run_id(cfg: DictConfig) -> str:
    """A stable id for a run: task, model and method names for people, a hash of the semantic config for identity."""
    payload = json.dumps(semantic_config(cfg), sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"{task_label(cfg.task)}-{cfg.model.name}-{cfg.method.name}-{digest}"


def task_label(task) -> str:
    """The task part of a run id: the benchmark and, when it scores one or two sets, which ("math-gsm8k",
    "glue-cola"); the eight commonsense sets are just "commonsense"."""
    datasets = list(task.get("datasets") or [])
    return task.name if not datasets or len(datasets) > 2 else f"{task.name}-{'+'.join(datasets)}"


def experiment_cells(overrides: Iterable[str]) -> tuple[DictConfig, list[DictConfig]]:
    """The experiment's own config and one config per cell of its grid for the active profile.

    Each cell's overrides come first, then the experiment's `profile_overrides` for the active profile (the
    sizing of a mini run, say), then the user's, so that `task.test_subset=10` applies to every cell.
    """
    overrides = list(overrides)
    base = compose(overrides)
    if not base.get("grid"):
        raise ConfigError("name an experiment with a grid, e.g. experiment=table1")
    profile = base.profile.name
    if profile not in base.grid:
        raise ConfigError(f"experiment {base.experiment_name} has no grid for profile {profile!r} (has {list(base.grid)})")
    common = list((base.get("profile_overrides") or {}).get(profile) or [])
    # `grid_cross`: every cell once per entry (GLUE: every method on every task), cell-major order
    cross = list((base.get("grid_cross") or {}).get(profile) or [[]])
    # `seeds`: every cell once per seed, seed-minor (the paper profile: 42, 43, 44; else the cell's own `seed`)
    seeds = [[f"seed={int(s)}"] for s in base.seeds] if base.get("seeds") else [[]]
    cells = [list(cell) + list(extra) + common + overrides + seed
             for cell in base.grid[profile] for extra in cross for seed in seeds]
    if not (base.get("tune_lr") or {}).get("enabled"):
        return base, [compose(cell) for cell in cells]
    return base, lr_search_cells(base, cells)


def lr_search_cells(base: DictConfig, cells: list[list[str]]) -> list[DictConfig]:
    """Each grid cell (its own recipe), then its points of the learning-rate search: `tune_lr.factors` x its lr,
    with records held out when its recipe has none. A point that is the grid cell itself (factor 1, a held-out
    split already) is the same run, kept once and marked as both.

    The harness's own grid rather than a Hydra sweeper: reproduce, submit, status and the tables all need every
    cell of an experiment up front (to check, skip, submit only the missing, and table them), and a sweeper exists
    only inside one multirun launch."""
    out: list[DictConfig] = []
    for cell in cells:
        own = compose(cell)
        points = []
        for factor in base.tune_lr.factors:
            extra = [f"training.lr={float(own.training.lr) * float(factor):.6g}", f"lr_point.factor={float(factor)}",
                     "lr_point.paper_recipe=false"]
            if not own.task.get("val_set_size"):
                extra.append(f"task.val_set_size={int(base.tune_lr.val_set_size)}")
            points.append((float(factor), compose(cell + extra)))
        is_own = any(factor == 1.0 and _same_cell(point, own) for factor, point in points)
        if is_own:
            own.lr_point.factor = 1.0
        out.append(own)
        out.extend(point for factor, point in points if not (is_own and factor == 1.0))
    return out


def _same_cell(a: DictConfig, b: DictConfig) -> bool:
    return json.dumps(semantic_config(a, with_inputs=False), sort_keys=True, default=str) == \
        json.dumps(semantic_config(b, with_inputs=False), sort_keys=True, default=str)
