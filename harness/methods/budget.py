"""Parameter budgets, the method side: each method solves for its own knob so that methods compare at an equal budget.

A budget is `budget.params` (a count) or `budget.fraction` (of the base model's parameters). The method's
`count(shapes, options)` predicts its trainable parameters on the adapted linear layers; the knob (rank, or
density for RoSA / SpA) is chosen so that the prediction lands as close as possible to the target.
Infeasible budgets are rejected before any training, with the feasible range. This module takes a method, its
options, a model (or shapes) and a target; reading the target from a run's config is `harness.budget`.
"""

from __future__ import annotations

from typing import Mapping

from torch import nn

from harness.errors import HarnessError
from harness.methods.base import Method, module_matches


class BudgetError(HarnessError, ValueError):
    default_hint = "choose a budget.params / budget.fraction inside the feasible range, or another method knob"


def _layer_index(name: str) -> int | None:
    """The block index in a module name (`model.layers.3.self_attn.q_proj` -> 3), as peft reads it."""
    return next((int(part) for part in name.split(".") if part.isdigit()), None)


def linear_shapes(model: nn.Module, target_modules, layers_to_transform=None) -> list[tuple[int, int]]:
    """(d_out, d_in) of every nn.Linear whose name ends with one of `target_modules` (in the listed layers)."""
    names = list(target_modules or [])
    layers = set(layers_to_transform) if layers_to_transform else None
    shapes = [(m.out_features, m.in_features) for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and module_matches(n, names) and (layers is None or _layer_index(n) in layers)]
    if not shapes:
        raise BudgetError(f"no linear layer matches target_modules={names}")
    return shapes


def target_count(budget: Mapping, total_params: int) -> int | None:
    params, fraction = budget.get("params"), budget.get("fraction")
    if params is not None and fraction is not None:
        raise BudgetError("give budget.params or budget.fraction, not both")
    if params is not None:
        return int(round(float(params)))
    if fraction is not None:
        return int(round(float(fraction) * total_params))
    return None


def _closest_int(method: Method, shapes, options, target: int, lo: int, hi: int) -> int:
    count = lambda r: method.count(shapes, options.replace(r=r))
    while lo < hi:  # smallest r with count(r) >= target (count grows with r)
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(mid) < target else (lo, mid)
    return min((max(lo - 1, 1), lo), key=lambda r: (abs(count(r) - target), r))


def _closest_density(method: Method, shapes, options, target: int) -> float:
    count = lambda d: method.count(shapes, options.replace(density=d))
    lo, hi = 0.0, 1.0
    for _ in range(60):  # bisection on the (floor-stepped, non-decreasing) count
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda d: abs(count(d) - target))


def solve(method: Method, shapes: list[tuple[int, int]], options: dict, target: int, total_params: int) -> tuple[dict, dict]:
    """(options with the knob set, a record of target / knob / predicted count). `options`: the config's dict;
    the counts read it as the method's typed options, the knob set by `replace` (no check: density 0 of SpA
    trains nothing, yet bounds the range)."""
    knob = method.budget_knob
    if knob is None:
        raise BudgetError(f"method={method.name} has no budget knob; remove budget.params / budget.fraction")
    # (the knob's own value is what is solved for: read at one its check accepts, as SpA's density 0 is not)
    typed = method.parse_options({**options, knob: {"r": 1, "density": 1.0}.get(knob, options.get(knob))})
    if knob == "r":
        r_max = min(min(shape) for shape in shapes)
        low, high = method.count(shapes, typed.replace(r=1)), method.count(shapes, typed.replace(r=r_max))
    else:
        low = method.count(shapes, typed.replace(density=0.0))
        low = max(low, 1) if low == 0 else low
        high = method.count(shapes, typed.replace(density=1.0))
    high = min(high, total_params)
    if not low <= target <= high:
        raise BudgetError(
            f"budget of {target:,} parameters is infeasible for method={method.name}"
            + (f" with r={options.get('r')}" if knob == "density" and int(options.get("r", 0)) > 0 else "")
            + f": the feasible range is {low:,} to {high:,} ({low / total_params:.3%} to {high / total_params:.3%} "
            f"of the {total_params:,}-parameter model)"
        )
    value = _closest_int(method, shapes, typed, target, 1, r_max) if knob == "r" else \
        _closest_density(method, shapes, typed, target)
    solved = {**options, knob: value}
    predicted = method.count(shapes, typed.replace(**{knob: value}))
    return solved, {"target": target, "knob": knob, "value": value, "predicted": predicted,
                    "relative_error": (predicted - target) / target}


def solve_by_counting(name: str, knob: str, count, target: int, total_params: int, largest: int = 1 << 16) -> dict:
    """The integer knob (>= 1) whose count lands closest to `target`, for a method whose count has no formula
    here: `count(value)` builds the adapted model (on the meta device) and counts it. The count must grow with the
    knob; the search doubles the knob until it passes the target (or the tuner refuses a larger one), then
    bisects. A record as `solve`'s."""
    low = count(1)
    high_value, high = 1, low
    while high < target and high_value < largest:
        try:
            next_count = count(high_value * 2)
        except (ValueError, HarnessError):  # (the tuner refuses a knob this large for these layers)
            break
        high_value, high = high_value * 2, next_count
    if not low <= target <= high:
        raise BudgetError(f"budget of {target:,} parameters is infeasible for method={name} ({knob}): the feasible "
                          f"range is {low:,} to {high:,} ({low / total_params:.3%} to {high / total_params:.3%} of the "
                          f"{total_params:,}-parameter model)")
    lo, hi = 1, high_value
    while lo < hi:  # the smallest value whose count reaches the target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(mid) < target else (lo, mid)
    value = min((max(lo - 1, 1), lo), key=lambda v: (abs(count(v) - target), v))
    predicted = count(value)
    return {"target": target, "knob": knob, "value": value, "predicted": predicted,
            "relative_error": (predicted - target) / target}


def solve_for_model(method: Method, options: dict, model: nn.Module, target: int, total_params: int,
                    options_at=None) -> dict:
    """The budget record of `method` with `options` on `model` (the real model or its architecture on the meta
    device): the method's own counting solver where it has one (method=peft), else the shape-based one on the
    linear layers it adapts. `options_at(knob, value)`: the options with a knob set and the preset's
    interpolations that follow it resolved again (AdaLoRA's target_r follows init_r)."""
    counted = method.solve_budget(model, options, target, total_params, options_at)
    if counted is not None:
        return counted
    shapes = linear_shapes(model, options.get("target_modules"), options.get("layers_to_transform"))
    return solve(method, shapes, options, target, total_params)[1]
