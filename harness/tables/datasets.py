"""The accuracy-per-test-set layout (MiLoRA Table 1): one block per (model, method) with our row, the
paper's row and the difference, a column per test set, Avg, parameters and step time."""

from __future__ import annotations

from typing import Mapping

import pandas as pd

from harness.methods import display
from harness.tables.common import FAILED, missing, params_text, protocol_description, recipe_sources, sizes_of_test_sets


def _avg(values: list[float | None]) -> float | None:
    """The macro mean, only when every set has a number (SPEC 2.1)."""
    if any(missing(v) for v in values):
        return None
    return sum(values) / len(values)


def build(df: pd.DataFrame, datasets: list[str], paper: Mapping, reference_model: str | None, short=str) -> pd.DataFrame:
    """`df`: the results' frame (harness.results.frame); `short`: dataset -> the column name."""
    columns = [short(d) for d in datasets]
    paper_cols = paper.get("columns", datasets)
    rows = []
    keys = sorted(df.groupby(["model", "method", "label"], sort=False).groups,
                  key=lambda k: (k[0], display.order(k[1]), k[2]))
    for model, method, label in keys:
        runs = df[(df.model == model) & (df.method == method) & (df.label == label)]
        base = {"model": model, "method": label}
        done = runs[runs.status == "finished"]
        if len(done):
            per_set = done.groupby("dataset")["accuracy"].mean()
            ours = [float(per_set[d]) if d in per_set else None for d in datasets]
            # runs per test set: the seeds of a commonsense run, or one run per GLUE task
            seeds = max(int((done.dataset == d).sum()) for d in datasets)
            first = done.iloc[0]
            rows.append({**base, "row": "ours", **dict(zip(columns, ours)), "Avg": _avg(ours),
                         "params": f"{params_text(first.trainable)} ({first.trainable_percent:.2f}%)",
                         "step s": done.drop_duplicates("run_id")["step_s"].mean(), "seeds": seeds})
        else:  # every run of this row failed: its cells say so instead of looking absent
            ours = [None] * len(datasets)
            rows.append({**base, "row": "ours", **{c: FAILED for c in columns}, "Avg": FAILED})
        paper_model = reference_model if missing(runs.iloc[0].paper_model) else runs.iloc[0].paper_model
        key = runs.iloc[0].label_key
        paper_row = (paper.get("rows", {}).get(paper_model) or {}).get(key)
        if paper_row:
            values = [paper_row[paper_cols.index(d)] if d in paper_cols else None for d in datasets]
            # the paper's own Avg for this row (a preset's, Neat-S, by its label), as published: never recomputed
            # from the rounded cells; absent when the published file has none
            paper_avg = (paper.get("avg", {}).get(paper_model) or {}).get(key)
            rows.append({**base, "row": f"paper ({paper_model})", **dict(zip(columns, values)), "Avg": paper_avg})
            diffs = [o - p if not missing(o) and p is not None else None for o, p in zip(ours, values)]
            avg_ours = _avg(ours)
            rows.append({**base, "row": "Δ ours - paper", **dict(zip(columns, diffs)),
                         "Avg": avg_ours - paper_avg if avg_ours is not None and paper_avg is not None else None})
    return pd.DataFrame(rows, columns=["model", "method", "row", *columns, "Avg", "params", "step s", "seeds"])


def caption(title: str, df: pd.DataFrame, profile_description: str, datasets: list[str], reference_model: str | None,
            note: str | None = None, short=str) -> str:
    sizes, absent = sizes_of_test_sets(df, datasets, short)
    text = (f"{title}. Profile: {profile_description}. Protocol: {protocol_description(df)}. "
            f"Test examples: {sizes}; accuracy in %; 'step s' is the mean training step time of our run.")
    if absent:
        text += f" No test data for {', '.join(absent)} ('-'); Avg is shown only when all {len(datasets)} sets are present."
    if reference_model:
        text += f" Paper rows are the published numbers; a model without its own paper row is compared with {reference_model}."
    if (df.status != "finished").any():
        text += " 'failed': every run of that row failed or diverged (its result file says why)."
    if recipe_sources(df):
        text += f" {recipe_sources(df)}"
    if note:
        text += f" {note}"
    return text
