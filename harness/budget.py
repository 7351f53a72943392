"""Parameter budgets, the run side: the target a run's config asks for (`budget.params` / `budget.fraction`), solved
by the method (`harness.methods.budget`), and the run config with the solved knob set."""

from __future__ import annotations

import copy

from omegaconf import OmegaConf
from torch import nn

from harness.config import method_options
from harness.methods.budget import (BudgetError, linear_shapes, solve, solve_by_counting,  # noqa: F401  (re-exported)
                                    solve_for_model, target_count)


def with_knob(cfg, record: dict):
    """A copy of the run config with the solved knob set (a dotted knob, `config.r`, inside the method's own)."""
    solved = copy.deepcopy(cfg)
    OmegaConf.update(solved.method, record["knob"], record["value"], force_add=True)
    return solved


def solved_config(cfg, shapes: list[tuple[int, int]], total_params: int):
    """(a copy of the run config with the method's knob solved from `cfg.budget`, the budget record), or
    (cfg, None) without a budget. Pure: the caller's config, and so its run id, stay as they were; the copy's
    interpolations (LoRA's alpha = 2r) follow the solved knob."""
    from harness import methods

    target = target_count(cfg.get("budget") or {}, total_params)
    if target is None:
        return cfg, None
    _, record = solve(methods.get(cfg.method.name), shapes, method_options(cfg), target, total_params)
    return with_knob(cfg, record), record


def solved_for_model(cfg, model: nn.Module, total_params: int):
    """`solved_config` on `model` (the real model, or its architecture on the meta device); the shapes are read
    only when the run asks for a budget."""
    from harness import methods

    target = target_count(cfg.get("budget") or {}, total_params)
    if target is None:
        return cfg, None

    def options_at(knob: str, value) -> dict:
        return method_options(with_knob(cfg, {"knob": knob, "value": value}))

    record = solve_for_model(methods.get(cfg.method.name), method_options(cfg), model, target, total_params, options_at)
    return with_knob(cfg, record), record
