"""The accuracy-per-test-set layout (MiLoRA Table 1): one block per (model, method) with our row, the
paper's row and the difference, a column per test set, Avg, parameters and step time."""

from __future__ import annotations

from typing import Mapping

import pandas as pd

from harness.methods import display
from harness.tables.common import FAILED, missing, params_text, protocol_description, recipe_sources, sizes_of_test_sets
from harness.tables.evidence import Evidence


def _avg(values: list[float | None]) -> float | None:
    """The macro mean, only when every set has a number (SPEC 2.1)."""
    if any(missing(v) for v in values):
        return None
    return sum(values) / len(values)


def build(df: pd.DataFrame, datasets: list[str], paper: Mapping, reference_model: str | None, short=str,
          evidence: Evidence | None = None) -> pd.DataFrame:
    """`df`: the results' frame (harness.results.frame); `short`: dataset -> the column name; `evidence`: the
    intervals and paired comparisons (harness.tables.evidence), None for the numbers alone.

    The rows of a block: `ours` (the mean over seeds), `std` over seeds (with several), `CI low` / `CI high`
    (95%), `Δ vs <reference>` with `p vs <reference>` (McNemar) or its own interval, and `significant vs
    <reference>` (1 / 0), `paper (<model>)`, `paper within CI` (1 / 0, only where the model and recipe are the
    paper's), `Δ ours - paper`, and `seed <n>` per seed."""
    columns = [short(d) for d in datasets]
    paper_cols = paper.get("columns", datasets)
    rows = []
    keys = sorted(df.groupby(["model", "method", "label"], sort=False).groups,
                  key=lambda k: (k[0], display.order(k[1]), k[2]))
    for model, method, label in keys:
        runs = df[(df.model == model) & (df.method == method) & (df.label == label)]
        base = {"model": model, "method": label}

        def add(row: str, values: list, avg=None, **extra):
            rows.append({**base, "row": row, **dict(zip(columns, values)), "Avg": avg, **extra})
        # a learning-rate search's points (tune_lr) are their own rows; `ours` is the grid's own recipe
        recipe = runs[runs.paper_recipe.astype(bool)] if "paper_recipe" in runs else runs
        search = runs[runs.lr_factor.notna() & (runs.status == "finished")] if "lr_factor" in runs else runs.iloc[:0]
        done = recipe[recipe.status == "finished"]
        ours, bounds = [None] * len(datasets), None
        if len(done):
            per_seed = done.assign(seed=done.seed.fillna(-1)).pivot_table(index="seed", columns="dataset",
                                                                          values="accuracy", aggfunc="mean")
            ours = [float(per_seed[d].mean()) if d in per_seed else None for d in datasets]
            # runs per test set: the seeds of a commonsense run, or one run per GLUE task
            seeds = max(int((done.dataset == d).sum()) for d in datasets)
            first = done.iloc[0]
            add("ours", ours, _avg(ours), params=f"{params_text(first.trainable)} ({first.trainable_percent:.2f}%)",
                **{"step s": done.drop_duplicates("run_id")["step_s"].mean(), "seeds": seeds})
            if len(per_seed) > 1:
                seed_avgs = [_avg([row.get(d) for d in datasets]) for _, row in per_seed.iterrows()]
                std = [float(per_seed[d].std(ddof=1)) if d in per_seed else None for d in datasets]
                add("std", std, pd.Series(seed_avgs, dtype=float).std(ddof=1) if None not in seed_avgs else None)
            if evidence is not None:
                per_set, avg_bounds = evidence.intervals(done, datasets)
                bounds = [per_set[d] for d in datasets]
                add("CI low", [b[0] if b else None for b in bounds], avg_bounds[0] if avg_bounds else None)
                add("CI high", [b[1] if b else None for b in bounds], avg_bounds[1] if avg_bounds else None)
                bounds = bounds + [avg_bounds]
                reference = evidence.reference_runs(model)
                if reference is not None and method != evidence.reference_method:
                    _add_comparison(add, evidence, done, reference[reference.status == "finished"], datasets)
        else:  # every run of this row failed: its cells say so instead of looking absent
            add("ours", [FAILED] * len(datasets), FAILED)
        _add_tuned(add, search, datasets)
        paper_model = reference_model if missing(runs.iloc[0].paper_model) else runs.iloc[0].paper_model
        key = runs.iloc[0].label_key
        paper_row = (paper.get("rows", {}).get(paper_model) or {}).get(key)
        if paper_row:
            values = [paper_row[paper_cols.index(d)] if d in paper_cols else None for d in datasets]
            # the paper's own Avg for this row (a preset's, Neat-S, by its label), as published: never recomputed
            # from the rounded cells; absent when the published file has none
            paper_avg = (paper.get("avg", {}).get(paper_model) or {}).get(key)
            add(f"paper ({paper_model})", values, paper_avg)
            # "reproduced within noise": only where the model and the recipe are the paper's, not a stand-in
            if bounds is not None and _papers_own(runs):
                marks = [_inside(v, b) for v, b in zip(values + [paper_avg], bounds)]
                add("paper within CI", marks[:-1], marks[-1])
            diffs = [o - p if not missing(o) and p is not None else None for o, p in zip(ours, values)]
            avg_ours = _avg(ours)
            add("Δ ours - paper", diffs, avg_ours - paper_avg if avg_ours is not None and paper_avg is not None else None)
        if len(done) and len(per_seed) > 1:
            for seed, row in per_seed.iterrows():
                values = [float(row[d]) if d in row and not missing(row[d]) else None for d in datasets]
                add(f"seed {int(seed)}", values, _avg(values))
    return pd.DataFrame(rows, columns=["model", "method", "row", *columns, "Avg", "params", "step s", "seeds"])


def _add_tuned(add, search: pd.DataFrame, datasets: list[str]) -> None:
    """`tuned lr`: the test scores at the searched lr with the lowest held-out loss (mean over seeds), its lr in
    `params`; then, for the csv, every lr of the search with its held-out loss and test scores."""
    if search.lr.nunique() < 2:
        return
    per_run = search.drop_duplicates("run_id")
    val = per_run.groupby("lr")["val_loss"].mean()
    if val.isna().any():
        return  # (a point without a held-out loss: nothing to select on)
    chosen = float(val.idxmin())

    def scores_at(lr: float) -> tuple[list, dict]:
        at = search[search.lr == lr]
        means = at.groupby("dataset")["accuracy"].mean()
        values = [float(means[d]) if d in means else None for d in datasets]
        return values, {"seeds": int(at.run_id.nunique()), "factor": float(at.lr_factor.iloc[0])}
    values, info = scores_at(chosen)
    add("tuned lr", values, _avg(values), params=f"lr {chosen:.2e} (x{info['factor']:g}; val loss {val[chosen]:.4f})",
        seeds=info["seeds"])
    for lr in sorted(val.index):
        values, info = scores_at(lr)
        add(f"lr {lr:.2e}", values, _avg(values), params=f"x{info['factor']:g}; val loss {val[lr]:.4f}", seeds=info["seeds"])


def _add_comparison(add, evidence: Evidence, runs: pd.DataFrame, reference: pd.DataFrame, datasets: list[str]) -> None:
    per_set, avg = evidence.comparisons(runs, reference, datasets)
    ref = display.label(evidence.reference_method, {})
    found = [per_set[d] for d in datasets] + [avg]
    if not any(c is not None for c in found):
        return
    value = lambda attr: [getattr(c, attr) if c is not None else None for c in found]  # noqa: E731
    add(f"Δ vs {ref}", value("difference")[:-1], value("difference")[-1])
    if any(c is not None and c.p_value is not None for c in found):
        add(f"p vs {ref}", value("p_value")[:-1], value("p_value")[-1])
    if any(c is not None and c.low is not None for c in found):
        add(f"Δ vs {ref} CI low", value("low")[:-1], value("low")[-1])
        add(f"Δ vs {ref} CI high", value("high")[:-1], value("high")[-1])
    significant = [None if c is None else float(c.significant) for c in found]
    add(f"significant vs {ref}", significant[:-1], significant[-1])


def _papers_own(runs: pd.DataFrame) -> bool:
    """The runs are of the paper's model (it has its own paper row) at the paper profile's recipe."""
    first = runs.iloc[0]
    return not missing(first.paper_model) and first.profile == "paper"


def _inside(value, bounds) -> float | None:
    if value is None or bounds is None:
        return None
    return float(bounds[0] <= float(value) <= bounds[1])


def shown(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The md / tex rows of `build`'s numbers, as text: `ours` with ± std over seeds, `95% CI` as [low, high],
    `Δ vs <reference>` with its p-value or interval and * when significant at 5%, the paper's numbers with ✓
    (inside our interval) or ✗, and `Δ ours - paper`. Every number stays in the csv."""
    out = []
    cells = [*columns, "Avg"]
    for (model, method), block in df.groupby(["model", "method"], sort=False):
        by_row = {r: row for r, row in zip(block["row"], block.to_dict("records"))}
        for name, row in by_row.items():
            if name == "ours":
                std = by_row.get("std", {})
                text = {c: _number(row[c]) + (f" ± {std[c]:.1f}" if not missing(std.get(c)) else "") for c in cells}
                out.append({**row, **text})
                if "CI low" in by_row:
                    low, high = by_row["CI low"], by_row["CI high"]
                    out.append({"model": model, "method": method, "row": "95% CI",
                                **{c: f"[{low[c]:.1f}, {high[c]:.1f}]" if not missing(low[c]) else "-" for c in cells}})
            elif name.startswith("Δ vs ") and " CI " not in name:
                ref = name.removeprefix("Δ vs ")
                out.append({"model": model, "method": method, "row": name,
                            **{c: _comparison_text(row[c], by_row.get(f"p vs {ref}", {}).get(c),
                                                   by_row.get(f"Δ vs {ref} CI low", {}).get(c),
                                                   by_row.get(f"Δ vs {ref} CI high", {}).get(c),
                                                   by_row[f"significant vs {ref}"][c]) for c in cells}})
            elif name.startswith("paper ("):
                marks = by_row.get("paper within CI", {})
                out.append({**row, **{c: _number(row[c]) + _mark(marks.get(c)) for c in cells}})
            elif name == "tuned lr":
                out.append({**row, **{c: _number(row[c]) for c in cells}})
            elif name == "Δ ours - paper":
                out.append({**row, **{c: _number(row[c], signed=True) for c in cells}})
    frame = pd.DataFrame(out, columns=df.columns)
    for col in ("params", "step s", "seeds"):
        frame[col] = [_cell_text(col, v) for v in frame[col]]
    return frame


def _number(value, signed: bool = False) -> str:
    if missing(value):
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _comparison_text(difference, p, low, high, significant) -> str:
    if missing(difference):
        return "-"
    star = "*" if significant == 1.0 else ""
    if not missing(p):
        return f"{difference:+.1f}{star} (p {p:.2f})"
    if not missing(low):
        return f"{difference:+.1f}{star} [{low:+.1f}, {high:+.1f}]"
    return f"{difference:+.1f}{star}"


def _mark(inside) -> str:
    return "" if missing(inside) else (" ✓" if inside == 1.0 else " ✗")


def _cell_text(column: str, value) -> str:
    if missing(value):
        return ""
    if column == "step s":
        return f"{value:.2f}"
    if column == "seeds":
        return str(int(value))
    return str(value)


def caption(title: str, df: pd.DataFrame, profile_description: str, datasets: list[str], reference_model: str | None,
            note: str | None = None, short=str, evidence_shown: bool = False) -> str:
    sizes, absent = sizes_of_test_sets(df, datasets, short)
    text = (f"{title}. Profile: {profile_description}. Protocol: {protocol_description(df, short)}. "
            f"Test examples: {sizes}; accuracy in %; 'step s' is the mean training step time of our run.")
    if absent:
        text += f" No test data for {', '.join(absent)} ('-'); Avg is shown only when all {len(datasets)} sets are present."
    if reference_model:
        text += f" Paper rows are the published numbers; a model without its own paper row is compared with {reference_model}."
    if evidence_shown:
        text += (" 95% CI: a bootstrap interval over the test examples (and over seeds, with several; "
                 "harness/statistics.py); Avg's resamples every set. 'Δ vs LoRA': the paired difference on the same "
                 "examples, McNemar's exact p for one seed's right / wrong answers, else a paired-bootstrap interval; "
                 "* significant at 5%.")
        if (df.profile == "paper").any():
            text += " ✓ / ✗: the paper's number lies inside / outside our interval (rows of the paper's own model)."
        else:
            text += (" The paper's numbers are not marked inside or outside our intervals: these cells are not the "
                     "paper's model at the paper's recipe.")
    if "lr_factor" in df and df.lr_factor.notna().any():
        text += (" 'tuned lr': the test scores at the learning rate of the search (the recipe's lr times each of "
                 "tune_lr.factors) with the lowest held-out loss, never a test score; 'ours' is the recipe's own lr.")
    if (df.status != "finished").any():
        text += " 'failed': every run of that row failed or diverged (its result file says why)."
    if recipe_sources(df):
        text += f" {recipe_sources(df)}"
    if note:
        text += f" {note}"
    return text
