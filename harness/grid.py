"""The cells of an experiment's grid: its `grid` for the active profile, crossed with `grid_cross` and the seeds,
with the profile's and the user's overrides, and the points of a learning-rate search."""

from __future__ import annotations

import json
from typing import Iterable

from omegaconf import DictConfig

from harness.config import compose
from harness.errors import ConfigError
from harness.identity import semantic_config


def experiment_cells(overrides: Iterable[str]) -> tuple[DictConfig, list[DictConfig]]:
    """The experiment's own config and one config per cell of its grid for the active profile.

    Each cell's overrides come first, then the experiment's `profile_overrides` for the active profile (the
    sizing of a mini run, say), then the user's, so that `task.test_subset=10` applies to every cell.
    """
    overrides = list(overrides)
    base = compose(overrides)
    if not base.meta.get("grid"):
        raise ConfigError("name an experiment with a grid, e.g. experiment=table1")
    profile = base.meta.profile.name
    if profile not in base.meta.grid:
        raise ConfigError(f"experiment {base.meta.experiment_name} has no grid for profile {profile!r} (has {list(base.meta.grid)})")
    common = list((base.meta.get("profile_overrides") or {}).get(profile) or [])
    # `grid_cross`: every cell once per entry (GLUE: every method on every task), cell-major order
    cross = list((base.meta.get("grid_cross") or {}).get(profile) or [[]])
    # `seeds`: every cell once per seed, seed-minor (the paper profile: 42, 43, 44; else the cell's own `seed`)
    seeds = [[f"seed={int(s)}"] for s in base.meta.seeds] if base.meta.get("seeds") else [[]]
    cells = [list(cell) + list(extra) + common + overrides + seed
             for cell in base.meta.grid[profile] for extra in cross for seed in seeds]
    if not (base.meta.get("tune_lr") or {}).get("enabled"):
        return base, [compose(cell) for cell in cells]
    return base, lr_search_cells(base, cells)


def lr_search_cells(base: DictConfig, cells: list[list[str]]) -> list[DictConfig]:
    """Each grid cell (its own recipe), then its points of the learning-rate search: `meta.tune_lr.factors` x its lr,
    with records held out when its recipe has none. A point that is the grid cell itself (factor 1, a held-out
    split already) is the same run, kept once and marked as both.

    The harness's own grid rather than a Hydra sweeper: reproduce, submit, status and the tables all need every
    cell of an experiment up front (to check, skip, submit only the missing, and table them), and a sweeper exists
    only inside one multirun launch."""
    out: list[DictConfig] = []
    for cell in cells:
        own = compose(cell)
        points = []
        for factor in base.meta.tune_lr.factors:
            extra = [f"training.lr={float(own.training.lr) * float(factor):.6g}", f"meta.lr_point.factor={float(factor)}",
                     "meta.lr_point.paper_recipe=false"]
            if not own.task.get("val_set_size"):
                extra.append(f"task.val_set_size={int(base.meta.tune_lr.val_set_size)}")
            points.append((float(factor), compose(cell + extra)))
        is_own = any(factor == 1.0 and _same_cell(point, own) for factor, point in points)
        if is_own:
            own.meta.lr_point.factor = 1.0
        out.append(own)
        out.extend(point for factor, point in points if not (is_own and factor == 1.0))
    return out


def _same_cell(a: DictConfig, b: DictConfig) -> bool:
    return json.dumps(semantic_config(a, with_inputs=False), sort_keys=True, default=str) == \
        json.dumps(semantic_config(b, with_inputs=False), sort_keys=True, default=str)
