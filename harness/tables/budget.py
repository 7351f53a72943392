"""The equal-budget layout (RoSA's table): rows grouped by trainable-parameter budget, each of our runs with
its knobs and exact count, beside the paper's row for the same method at the same budget."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

from harness.methods import display
import numpy as np

from harness.statistics import interval, reproduction
from harness.tables.common import FAILED, missing, params_text, protocol_description, recipe_sources, data_notes, engine_notes, sizes_of_test_sets

FULL = "-"  # the budget label of full fine-tuning, as in the paper's table


def knob_label(run) -> str:
    """"LoRA r=16", "RoSA r=12 d=0.15%", "SpA d=0.60%", "Full FT": the label and the knobs the run trained with."""
    return " ".join(part for part in (run.label, run.knob) if part)


def budget_group(run, fractions: Sequence[float], labels: Sequence[str]) -> str:
    """The label of the budget nearest (in log scale) to the run's trainable share of the model (a failed run:
    the budget it asked for); full FT and anything over ten times the largest budget is the full-model row."""
    if run.status == "finished":
        share = run.trainable / run.total
    else:
        share = run.budget_fraction if not missing(run.budget_fraction) else fractions[0]
    if display.trains_all_weights(run.method) or share > 10 * max(fractions):
        return FULL
    nearest = min(range(len(fractions)), key=lambda i: abs(math.log(share / fractions[i])))
    return labels[nearest]


def paper_row_of(rows: list[Mapping], budget: str, run) -> Mapping | None:
    """The published row of this method at this budget; where the paper has several (RoSA r=16 d=0.6% and
    r=8 d=0.9% at ~80M), the one whose rank `r` is the run's."""
    found = [row for row in rows if row["budget"] == budget and row["method"] == run.method]
    if len(found) > 1:
        found = [row for row in found if row.get("r") == run.rank] or found[:1]
    return found[0] if found else None


def build(df: pd.DataFrame, datasets: list[str], paper: Mapping, fractions: Sequence[float],
          labels: Sequence[str], short=str, evidence=None, margin: float = 2.0) -> pd.DataFrame:
    """`df`: the results' frame (harness.results.frame), a row per run and test set; `evidence`
    (harness.tables.evidence): each row's 95% interval per set over its seeds, as `<set> CI low` / `<set> CI
    high`, and, for the paper's model, the reproduction verdict (`vs paper <set>`, harness.statistics.reproduction
    at ±`margin` points) with the interval of Δ."""
    columns = [short(d) for d in datasets]
    paper_rows = list(paper.get("rows", []))
    paper_cols = paper.get("columns", datasets)
    accuracy = df.dropna(subset=["dataset"]).set_index(["run_id", "dataset"])["accuracy"]
    runs = df.drop_duplicates("run_id").copy()
    runs["group"] = [budget_group(run, fractions, labels) for run in runs.itertuples()]
    runs["order"] = [display.order(m) for m in runs.method]
    runs["rank_desc"] = [-int(r) if not missing(r) else 0 for r in runs["rank"]]
    runs["row_key"] = [(run.group, run.model, knob_label(run)) for run in runs.itertuples()]
    rows = []
    for label in [*labels, FULL]:
        group = runs[runs.group == label].sort_values(["order", "rank_desc", "trainable"])
        # one row per method and knobs: its runs on different tasks (GSM8K, ViGGO, SQL) fill its columns
        for _, same in group.groupby("row_key", sort=False):
            run = same.iloc[0]
            ours, params = {}, ""
            failed = (same.status != "finished").any()
            done = {d: [r.run_id for r in same.itertuples() if r.status == "finished" and (r.run_id, d) in accuracy.index]
                    for d in datasets}
            for c, d in zip(columns, datasets):
                if done[d]:  # the mean over the row's seeds
                    ours[c] = float(np.mean([accuracy.get((rid, d)) for rid in done[d]]))
                    first = same[same.run_id == done[d][0]].iloc[0]
                    params = params or f"{params_text(first.trainable)} ({first.trainable_percent:.2f}%)"
                else:  # (a failed run's frame row names no set: it shows in every column no finished run fills)
                    ours[c] = FAILED if failed else None
            row = {"budget": label, "method": knob_label(run), "params": params, "seeds": max(map(len, done.values())) or None,
                   **ours}
            found = {d: evidence.set_runs(df[df.run_id.isin(done[d])], d) if evidence is not None and done[d] else None
                     for d in datasets}
            for c, d in zip(columns, datasets):
                bounds = interval([found[d]]) if found[d] is not None else None
                row[f"{c} CI low"], row[f"{c} CI high"] = bounds if bounds else (None, None)
            published_row = paper_row_of(paper_rows, label, run)
            row["paper method"] = published_row["label"] if published_row else None
            row["paper params"] = params_text(float(published_row["params"])) if published_row else None
            for c, d in zip(columns, datasets):
                theirs = published_row["scores"][paper_cols.index(d)] if published_row and d in paper_cols else None
                row[f"paper {c}"] = theirs
                row[f"Δ {c}"] = ours[c] - theirs if isinstance(ours[c], float) and theirs is not None else None
                # judged where the runs are the paper's model at the paper profile's recipe
                judged = reproduction([found[d]], theirs, margin) if theirs is not None and found[d] is not None \
                    and run.profile == "paper" and not missing(run.paper_model) else None
                row[f"vs paper {c}"] = judged.verdict if judged else None
                row[f"Δ {c} CI low"], row[f"Δ {c} CI high"] = (judged.low, judged.high) if judged else (None, None)
            row["step s"] = run.step_s
            rows.append(row)
    ordered = ["budget", "method", "params", "seeds", *columns,
               *[f"{c} CI {end}" for c in columns for end in ("low", "high")], "paper method", "paper params",
               *[f"paper {c}" for c in columns], *[f"Δ {c}" for c in columns],
               *[f"Δ {c} CI {end}" for c in columns for end in ("low", "high")], *[f"vs paper {c}" for c in columns],
               "step s"]
    return pd.DataFrame(rows, columns=ordered)


def caption(title: str, df: pd.DataFrame, profile_description: str, datasets: list[str], paper: Mapping,
            fractions: Sequence[float], labels: Sequence[str], note: str | None = None, short=str,
            margin: float = 2.0) -> str:
    sizes, absent = sizes_of_test_sets(df, datasets, short)
    budgets = ", ".join(f"{label} = {100 * f:.2f}%" for label, f in zip(labels, fractions))
    text = (f"{title}. Profile: {profile_description}. Protocol: {protocol_description(df, short)}. "
            f"Test examples: {sizes}; accuracy in %. Budgets as shares of the base model ({budgets}); each run sits "
            f"in the budget nearest its trainable share, 'params' is its exact trainable count (share). "
            f"Paper columns: {paper.get('model', 'the paper')}, {paper.get('source', 'published numbers')}; "
            f"'step s' is the mean training step time of our run; each cell is the mean over the row's seeds; "
            f"'<set> CI low / high': its 95% interval (harness/statistics.py: one seed, Wilson's over the test "
            f"examples; several, for this test set, mean ± t(S-1) x sd / √S over the seeds); 'vs paper <set>' (paper "
            f"model only): the paper's number as one more run on the same test set, reproduced when the 90% interval "
            f"of Δ lies within ±{margin:g} points (meta.table.reproduction_margin.per_set), differs when the 95% one excludes "
            f"0, else inconclusive; one seed is not judged.")
    if absent:
        text += f" No test data for {', '.join(absent)} ('-')."
    if recipe_sources(df):
        text += f" {recipe_sources(df)}"
    if data_notes(df):
        text += f" {data_notes(df)}"
    if engine_notes(df):
        text += f" {engine_notes(df)}"
    if note:
        text += f" {note}"
    return text
