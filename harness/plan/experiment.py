"""An experiment's plan: its grid's cells (one row per cell, its seeds counted as runs), each fitted, sized and
timed on the named GPU."""

from __future__ import annotations

import json

from omegaconf import DictConfig

from harness import methods
from harness.methods import display
from harness.errors import ConfigError
from harness.gpus import GpuSpec, of
from harness.grid import experiment_cells
from harness.identity import semantic_config
from harness.plan import CellPlan, Plan
from harness.plan.cost import fit, hours, measured_mfu
from harness.plan.work import data_shape, work


def with_paper_profile(overrides: list[str]) -> list[str]:
    """The paper's scale unless a profile is named: what a plan is for."""
    if any(o.split("=", 1)[0].lstrip("+~") == "profile" for o in overrides):
        return overrides
    return [*overrides, "profile=paper"]


def gpu_of(base: DictConfig) -> GpuSpec:
    if not base.meta.get("gpu"):
        from harness.gpus import known

        raise ConfigError("name the GPU to plan for: gpu=<name>",
                          f"one of {', '.join(g.name for g in known())} (conf/gpu/)")
    return of(base.meta.gpu)


def check_settings(settings) -> None:
    """The planner's assumptions are shares: MFU and bandwidth in (0, 1], headroom in [0, 1)."""
    for key, low_open, high_open in (("mfu", True, False), ("default_mfu", True, False),
                                     ("bandwidth_share", True, False), ("headroom", False, True)):
        value = settings.get(key)
        if value is None and key == "mfu":
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
        if not ok:
            raise ConfigError(f"meta.plan.{key}={value!r} must be a share between 0 and 1 (conf/config.yaml, meta.plan)")


def _runs(cells: list[DictConfig]) -> list[tuple[DictConfig, int]]:
    """Each distinct cell once with the number of its seeds (cells that differ in `seed` alone)."""
    grouped: dict[str, list] = {}
    for cfg in cells:
        key = semantic_config(cfg, with_inputs=False)
        key.pop("seed", None)
        grouped.setdefault(json.dumps(key, sort_keys=True, default=str), [cfg, 0])[1] += 1
    return [(cfg, n) for cfg, n in grouped.values()]


def plan(overrides: list[str]) -> Plan:
    base, cells = experiment_cells(with_paper_profile(list(overrides)))
    gpu, gpus = gpu_of(base), base.meta.get("gpus")
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise ConfigError(f"meta.gpus={gpus!r} must be a positive integer (the GPUs the grid runs on)")
    settings = base.meta.plan
    check_settings(settings)
    if settings.get("mfu"):
        mfu, source = float(settings.mfu), "meta.plan.mfu"
    else:
        measured, count = measured_mfu(base.meta.run.results_dir, gpu)
        mfu = measured or float(settings.default_mfu)
        source = (f"the median of {count} results on {gpu.label} in {base.meta.run.results_dir}" if measured
                  else f"assumed: no result in {base.meta.run.results_dir} records one on {gpu.label}")
    rows, shapes = [], {}
    for cfg, runs in _runs(cells):
        key = json.dumps([dict(cfg.task), cfg.model.name, dict(cfg.training)], sort_keys=True, default=str)
        if key not in shapes:
            shapes[key] = data_shape(cfg)
        shape = shapes[key]
        cell_fit = fit(cfg, shape, gpu, float(settings.headroom))
        cell_work = work(cfg, shape)
        trains_all = methods.get(cfg.method.name).trains_all_weights
        notes = list(shape.notes)
        if cell_fit.memory.untraced:
            notes.append(f"{display.cell_label(cfg)}: peak not traced ({cell_fit.memory.untraced}): weights and moments only")
        rows.append(CellPlan(cfg.model.name, display.cell_label(cfg), cfg.task.name, runs, cell_fit, cell_work,
                             hours(cell_work, cell_fit.memory, trains_all, gpu, cell_fit.gpus, mfu,
                                   float(settings.bandwidth_share)), notes))
    return Plan(str(base.meta.experiment_name), str(base.meta.profile.name), gpu, gpus, mfu, source, rows)
