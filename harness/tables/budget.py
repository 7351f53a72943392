"""The equal-budget layout (RoSA's table): rows grouped by trainable-parameter budget, each of our runs with
its knobs and exact count, beside the paper's row for the same method at the same budget."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

from harness.tables.common import (FAILED, method_info, finished, method_label, method_order, params_text,
                                   protocol_description, sizes_of_test_sets)

FULL = "-"  # the budget label of full fine-tuning, as in the paper's table


def knob_label(result: Mapping) -> str:
    """"LoRA r=16", "RoSA r=12 d=0.15%", "SpA d=0.60%", "Full FT": the label and the knobs the run trained with,
    as the method shows them."""
    options = (result.get("config") or {}).get("method") or {}
    return " ".join(part for part in (method_label(result), method_info(result["method"]).knob_label(options)) if part)


def budget_group(result: Mapping, fractions: Sequence[float], labels: Sequence[str]) -> str:
    """The label of the budget nearest (in log scale) to the run's trainable share of the model; full FT and
    anything over ten times the largest budget is the full-model row."""
    if finished(result):
        share = result["params"]["trainable"] / result["params"]["total"]
    else:  # a failed run has no count: the budget it asked for
        share = ((result.get("config") or {}).get("budget") or {}).get("fraction") or fractions[0]
    if getattr(method_info(result["method"]), "trains_all_weights", False) or share > 10 * max(fractions):
        return FULL
    nearest = min(range(len(fractions)), key=lambda i: abs(math.log(share / fractions[i])))
    return labels[nearest]


def _sort_key(result: Mapping) -> tuple:
    options = (result.get("config") or {}).get("method") or {}
    return method_order(result["method"]), -int(options.get("r") or 0), (result.get("params") or {}).get("trainable", 0)


def build(results: list[Mapping], datasets: list[str], paper: Mapping, fractions: Sequence[float],
          labels: Sequence[str], short=str) -> pd.DataFrame:
    columns = [short(d) for d in datasets]
    paper_rows = {(row["budget"], row["method"]): row for row in paper.get("rows", [])}
    paper_cols = paper.get("columns", datasets)
    groups = {label: [] for label in [*labels, FULL]}
    for r in results:
        groups[budget_group(r, fractions, labels)].append(r)
    rows = []
    for label, runs in groups.items():
        for r in sorted(runs, key=_sort_key):
            if finished(r):
                ours = {c: (r["metrics"].get(d) or {}).get("accuracy") for c, d in zip(columns, datasets)}
                params = f"{params_text(r['params']['trainable'])} ({r['params']['trainable_percent']:.2f}%)"
            else:
                ours, params = {c: FAILED for c in columns}, ""
            row = {"budget": label, "method": knob_label(r), "params": params, **ours}
            published_row = paper_rows.get((label, r["method"]))
            row["paper method"] = published_row["label"] if published_row else None
            row["paper params"] = params_text(float(published_row["params"])) if published_row else None
            for c, d in zip(columns, datasets):
                theirs = published_row["scores"][paper_cols.index(d)] if published_row and d in paper_cols else None
                row[f"paper {c}"] = theirs
                row[f"Δ {c}"] = ours[c] - theirs if isinstance(ours[c], float) and theirs is not None else None
            row["step s"] = (r.get("train") or {}).get("step_seconds_mean")
            rows.append(row)
    ordered = ["budget", "method", "params", *columns, "paper method", "paper params",
               *[f"paper {c}" for c in columns], *[f"Δ {c}" for c in columns], "step s"]
    return pd.DataFrame(rows, columns=ordered)


def caption(title: str, results: list[Mapping], profile_description: str, datasets: list[str], paper: Mapping,
            fractions: Sequence[float], labels: Sequence[str], note: str | None = None, short=str) -> str:
    sizes, absent = sizes_of_test_sets(results, datasets, short)
    budgets = ", ".join(f"{label} = {100 * f:.2f}%" for label, f in zip(labels, fractions))
    text = (f"{title}. Profile: {profile_description}. Protocol: {protocol_description(results)}. "
            f"Test examples: {sizes}; accuracy in %. Budgets as shares of the base model ({budgets}); each run sits "
            f"in the budget nearest its trainable share, 'params' is its exact trainable count (share). "
            f"Paper columns: {paper.get('model', 'the paper')}, {paper.get('source', 'published numbers')}; "
            f"'step s' is the mean training step time of our run.")
    if absent:
        text += f" No test data for {', '.join(absent)} ('-')."
    if note:
        text += f" {note}"
    return text
