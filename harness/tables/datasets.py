"""The accuracy-per-test-set layout (MiLoRA Table 1): one block per (model, method) with our row, the
paper's row and the difference, a column per test set, Avg, parameters and step time."""

from __future__ import annotations

from typing import Mapping

import pandas as pd

from harness.tables.common import (FAILED, finished, label_key, mean_or_none, method_label, method_order, missing,
                                   params_text, protocol_description, sizes_of_test_sets)


def _avg(values: list[float | None]) -> float | None:
    """The macro mean, only when every set has a number (SPEC 2.1)."""
    if any(missing(v) for v in values):
        return None
    return sum(values) / len(values)


def build(results: list[Mapping], datasets: list[str], paper: Mapping, reference_model: str | None, short=str) -> pd.DataFrame:
    """`short`: dataset -> the column name (the benchmark's short names)."""
    columns = [short(d) for d in datasets]
    paper_cols = paper.get("columns", datasets)
    by_key: dict[tuple[str, str], list[Mapping]] = {}
    for r in results:
        by_key.setdefault((r["model"], r["method"], method_label(r)), []).append(r)
    rows = []
    for (model, method, label), runs in sorted(by_key.items(), key=lambda kv: (kv[0][0], method_order(kv[0][1]), kv[0][2])):
        base = {"model": model, "method": label}
        done = [run for run in runs if finished(run)]
        if done:
            ours = [mean_or_none([run["metrics"][d]["accuracy"] for run in done if d in run["metrics"]]) for d in datasets]
            step_times = [run.get("train", {}).get("step_seconds_mean") for run in done]
            # runs per test set: the seeds of a commonsense run, or one run per GLUE task
            seeds = max(sum(d in run["metrics"] for run in done) for d in datasets)
            rows.append({**base, "row": "ours", **dict(zip(columns, ours)), "Avg": _avg(ours),
                         "params": f"{params_text(done[0]['params']['trainable'])} ({done[0]['params']['trainable_percent']:.2f}%)",
                         "step s": mean_or_none(step_times), "seeds": seeds})
        else:  # every run of this row failed: its cells say so instead of looking absent
            ours = [None] * len(datasets)
            rows.append({**base, "row": "ours", **{c: FAILED for c in columns}, "Avg": FAILED})
        paper_model = runs[0].get("paper_model") or reference_model
        paper_row = (paper.get("rows", {}).get(paper_model) or {}).get(label_key(runs[0]))
        if paper_row:
            values = [paper_row[paper_cols.index(d)] if d in paper_cols else None for d in datasets]
            # the paper's own Avg for this row (a preset's, Neat-S, by its label), else the mean of its cells
            paper_avg = (paper.get("avg", {}).get(paper_model) or {}).get(label_key(runs[0]), _avg(values))
            rows.append({**base, "row": f"paper ({paper_model})", **dict(zip(columns, values)), "Avg": paper_avg})
            diffs = [o - p if o is not None and p is not None else None for o, p in zip(ours, values)]
            avg_ours = _avg(ours)
            rows.append({**base, "row": "Δ ours - paper", **dict(zip(columns, diffs)),
                         "Avg": avg_ours - paper_avg if avg_ours is not None and paper_avg is not None else None})
    return pd.DataFrame(rows, columns=["model", "method", "row", *columns, "Avg", "params", "step s", "seeds"])


def caption(title: str, results: list[Mapping], profile_description: str, datasets: list[str], reference_model: str | None,
            note: str | None = None, short=str) -> str:
    sizes, absent = sizes_of_test_sets(results, datasets, short)
    text = (f"{title}. Profile: {profile_description}. Protocol: {protocol_description(results)}. "
            f"Test examples: {sizes}; accuracy in %; 'step s' is the mean training step time of our run.")
    if absent:
        text += f" No test data for {', '.join(absent)} ('-'); Avg is shown only when all {len(datasets)} sets are present."
    if reference_model:
        text += f" Paper rows are the published numbers; a model without its own paper row is compared with {reference_model}."
    if any(not finished(r) for r in results):
        text += " 'failed': every run of that row failed or diverged (its result file says why)."
    if note:
        text += f" {note}"
    return text
