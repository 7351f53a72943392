"""The accuracy-per-test-set layout (MiLoRA Table 1): one block per (model, method) with our row, the
paper's row and the difference, a column per test set, Avg, parameters and step time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pandas as pd

from harness.methods import display
from harness.tables.common import FAILED, missing, params_text, protocol_description, recipe_sources, data_notes, engine_notes, sizes_of_test_sets
from harness.statistics import CONFIDENCE, holm
from harness.tables.evidence import AVG, Evidence


def _avg(values: list[float | None]) -> float | None:
    """The macro mean, only when every set has a number (SPEC 2.1)."""
    if any(missing(v) for v in values):
        return None
    return sum(values) / len(values)


@dataclass
class Judging:
    """How a table judges ours against the paper (`meta.table.reproduction_margin`, `meta.table.pooled_seed_spread` in
    conf/config.yaml, an experiment's `table:` may set its own): the equivalence margins in points, and whether
    one-seed rows borrow the seed spread pooled over the table's several-seed rows."""

    margin_avg: float
    margin_per_set: float
    pooled_seed_spread: bool

    @classmethod
    def from_table(cls, table: Mapping | None = None) -> "Judging":
        from omegaconf import OmegaConf

        from harness.config import CONFIG_DIR

        defaults = OmegaConf.load(CONFIG_DIR / "config.yaml").meta.table
        merged = OmegaConf.merge(defaults, {k: v for k, v in (table or {}).items() if k in defaults})
        return cls(float(merged.reproduction_margin.avg), float(merged.reproduction_margin.per_set),
                   bool(merged.pooled_seed_spread))

    @property
    def margins(self) -> dict[str, float]:
        return {"avg": self.margin_avg, "per_set": self.margin_per_set}


def build(df: pd.DataFrame, datasets: list[str], paper: Mapping, reference_model: str | None, short=str,
          evidence: Evidence | None = None, judging: Judging | None = None) -> pd.DataFrame:
    """`df`: the results' frame (harness.results.frame); `short`: dataset -> the column name; `evidence`: the
    intervals, paired comparisons and verdicts (harness.tables.evidence), None for the numbers alone; `judging`:
    the reproduction margins (default: conf/config.yaml's `table`).

    The rows of a block: `ours` (the mean over seeds), `std` over seeds (with several), `CI low` / `CI high`
    (95%), `Δ vs <reference>` with `p vs <reference>` (unadjusted), `p adj vs <reference>` (Holm within the row's
    sets; Avg, the primary comparison, unadjusted), its interval where the test gives one, and `significant vs
    <reference>` (1 / 0, from the adjusted p), `paper (<model>)`, `vs paper` (the reproduction verdict, only
    where the model and recipe are the paper's) with `Δ ours - paper` and its interval, `last epoch` (a
    best-epoch protocol's last epoch), and `seed <n>` per seed."""
    judging = judging or Judging.from_table()
    columns = [short(d) for d in datasets]
    rows = []
    keys = sorted(df.groupby(["model", "method", "label"], sort=False).groups,
                  key=lambda k: (k[0], display.order(k[1]), k[2]))
    blocks = {key: df[(df.model == key[0]) & (df.method == key[1]) & (df.label == key[2])] for key in keys}
    pooled = _pooled(evidence, blocks, datasets) if evidence is not None and judging.pooled_seed_spread else None
    for (model, method, label), runs in blocks.items():
        base = {"model": model, "method": label}

        def add(row: str, values: list, avg=None, **extra):
            rows.append({**base, "row": row, **dict(zip(columns, values)), "Avg": avg, **extra})
        _add_block(add, runs, model, method, datasets, columns, paper, reference_model, evidence, judging, pooled)
    return pd.DataFrame(rows, columns=["model", "method", "row", *columns, "Avg", "params", "step s", "seeds"])


def _recipe_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """A row's finished runs at the grid's own recipe (a learning-rate search's points are rows of their own)."""
    recipe = runs[runs.paper_recipe.astype(bool)] if "paper_recipe" in runs else runs
    return recipe[recipe.status == "finished"]


def _pooled(evidence: Evidence, blocks: Mapping, datasets: list[str]) -> dict:
    return evidence.pooled_spreads([_recipe_runs(runs) for runs in blocks.values()], datasets)


def _add_block(add, runs, model, method, datasets, columns, paper, reference_model, evidence, judging, pooled) -> None:
    search = runs[runs.lr_factor.notna() & (runs.status == "finished")] if "lr_factor" in runs else runs.iloc[:0]
    done = _recipe_runs(runs)
    ours, per_seed = [None] * len(datasets), None
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
            add("CI low", [b[0] if b else None for b in per_set.values()], avg_bounds[0] if avg_bounds else None)
            add("CI high", [b[1] if b else None for b in per_set.values()], avg_bounds[1] if avg_bounds else None)
            reference = evidence.reference_runs(model)
            if reference is not None and method != evidence.reference_method:
                _add_comparison(add, evidence, done, reference[reference.status == "finished"], datasets)
    else:  # every run of this row failed: its cells say so instead of looking absent
        add("ours", [FAILED] * len(datasets), FAILED)
    _add_tuned(add, search, datasets, columns)
    _add_paper(add, runs, done, ours, datasets, paper, reference_model, evidence, judging, pooled)
    if len(done) and "last_accuracy" in done and done.last_accuracy.notna().any():
        last = done.groupby("dataset")["last_accuracy"].mean()
        values = [float(last[d]) if d in last and not missing(last[d]) else None for d in datasets]
        add("last epoch", values, _avg(values))
    if per_seed is not None and len(per_seed) > 1:
        for seed, row in per_seed.iterrows():
            values = [float(row[d]) if d in row and not missing(row[d]) else None for d in datasets]
            add(f"seed {int(seed)}", values, _avg(values))


def _add_paper(add, runs, done, ours, datasets, paper, reference_model, evidence, judging, pooled) -> None:
    """The paper's row, and where the runs are the paper's model at its recipe, the verdict against it."""
    paper_cols = paper.get("columns", datasets)
    paper_model = reference_model if missing(runs.iloc[0].paper_model) else runs.iloc[0].paper_model
    key = runs.iloc[0].label_key
    paper_row = (paper.get("rows", {}).get(paper_model) or {}).get(key)
    if not paper_row:
        return
    values = [paper_row[paper_cols.index(d)] if d in paper_cols else None for d in datasets]
    # the paper's own Avg for this row (a preset's, Neat-S, by its label), as published: never recomputed from
    # the rounded cells; absent when the published file has none
    paper_avg = (paper.get("avg", {}).get(paper_model) or {}).get(key)
    add(f"paper ({paper_model})", values, paper_avg)
    # judged only where the model and the recipe are the paper's, not a stand-in, and the published row was scored
    # by the table's protocol (`scored_otherwise`: a row cited from another evaluation, MetaMath-7B's in Table 2)
    judged = evidence is not None and len(done) and _papers_own(runs) and key not in (paper.get("scored_otherwise") or {})
    if judged:
        published_values = {**dict(zip(datasets, values)), AVG: paper_avg}
        found = evidence.verdicts(done, datasets, published_values, judging.margins, pooled)
        cells = [found[d] for d in datasets] + [found[AVG]]
        verdicts = [None if v is None else v.verdict + (" (pooled spread)" if v.spread.startswith("seed spread pooled") else "")
                    for v in cells]
        add("vs paper", verdicts[:-1], verdicts[-1])
    diffs = [o - p if not missing(o) and p is not None else None for o, p in zip(ours, values)]
    avg_ours = _avg(ours)
    add("Δ ours - paper", diffs, avg_ours - paper_avg if avg_ours is not None and paper_avg is not None else None)
    if judged:
        for end in ("low", "high"):
            bounds = [getattr(v, end) if v else None for v in cells]
            add(f"Δ ours - paper CI {end}", bounds[:-1], bounds[-1])


def _add_tuned(add, search: pd.DataFrame, datasets: list[str], columns: list[str]) -> None:
    """`tuned lr`: per run group (the runs that scored a set: one run per lr for every commonsense set, one task's
    runs for each GLUE set), the test scores at the lr factor with the lowest held-out loss (mean over seeds),
    compared within the group only (two tasks' losses are on different scales; their base lrs differ), the
    factor in `params`; then, for the csv, every factor of the search with its test scores."""
    if not len(search) or search.lr_factor.nunique() < 2:
        return
    groups: dict[tuple, list[int]] = {}  # the run ids of a group -> the positions of the sets it scored
    for i, d in enumerate(datasets):
        ids = tuple(sorted(search[search.dataset == d].run_id))
        if ids:
            groups.setdefault(ids, []).append(i)
    chosen: dict[int, float] = {}
    losses: dict[tuple, pd.Series] = {}
    for ids, positions in groups.items():
        val = search[search.run_id.isin(ids)].drop_duplicates("run_id").groupby("lr_factor")["val_loss"].mean()
        if len(val) < 2 or val.isna().any():
            continue  # (a point without a held-out loss: nothing to select on)
        losses[ids] = val
        chosen.update({i: float(val.idxmin()) for i in positions})
    if not chosen:
        return

    def scores_at(factor_of: Mapping[int, float]) -> list:
        at = [search[(search.dataset == d) & (search.lr_factor == factor_of.get(i))] for i, d in enumerate(datasets)]
        return [float(a.accuracy.mean()) if len(a) else None for a in at]

    def named(ids: tuple) -> str:  # "" for a single group: it names every column
        return f" {', '.join(columns[i] for i in groups[ids])}" if len(losses) > 1 else ""
    values = scores_at(chosen)
    text = "; ".join(f"x{val.idxmin():g}{named(ids)} (val loss {val.min():.4f})" for ids, val in losses.items())
    seeds = search[search.run_id.isin([r for ids in losses for r in ids])].seed.nunique()
    add("tuned lr", values, _avg(values), params=f"lr {text}", seeds=int(seeds))
    for factor in sorted(search.lr_factor.unique()):
        values = scores_at({i: factor for i in range(len(datasets))})
        text = "; ".join(f"val loss{named(ids)} {val[factor]:.4f}" for ids, val in losses.items() if factor in val)
        add(f"lr x{factor:g}", values, _avg(values), params=text)


def _add_comparison(add, evidence: Evidence, runs: pd.DataFrame, reference: pd.DataFrame, datasets: list[str]) -> None:
    """Δ vs the reference: each set's test Holm-adjusted within the row (the family: "differs from the reference
    on some set"); Avg, the primary comparison, unadjusted."""
    per_set, avg = evidence.comparisons(runs, reference, datasets)
    ref = display.label(evidence.reference_method, {})
    found = [per_set[d] for d in datasets] + [avg]
    if not any(c is not None for c in found):
        return
    value = lambda attr: [getattr(c, attr) if c is not None else None for c in found]  # noqa: E731
    raw = value("p_value")
    adjusted = holm(raw[:-1]) + [raw[-1]]
    add(f"Δ vs {ref}", value("difference")[:-1], value("difference")[-1])
    add(f"p vs {ref}", raw[:-1], raw[-1])
    add(f"p adj vs {ref}", adjusted[:-1], adjusted[-1])
    if any(c is not None and c.low is not None for c in found):
        add(f"Δ vs {ref} CI low", value("low")[:-1], value("low")[-1])
        add(f"Δ vs {ref} CI high", value("high")[:-1], value("high")[-1])
    significant = [None if p is None else float(p < 1 - CONFIDENCE) for p in adjusted]
    add(f"significant vs {ref}", significant[:-1], significant[-1])


def _papers_own(runs: pd.DataFrame) -> bool:
    """The runs are of the paper's model (it has its own paper row) at the paper profile's recipe."""
    first = runs.iloc[0]
    return not missing(first.paper_model) and first.profile == "paper"


def shown(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The md / tex rows of `build`'s numbers, as text: `ours` with ± std over seeds, `95% CI` as [low, high],
    `Δ vs <reference>` with its interval where the test gives one, its p (Holm-adjusted within the row's sets)
    and * when that p < 5%, the paper's numbers, `vs paper` (the verdict) and `Δ ours - paper` with its
    interval. Every number stays in the csv."""
    out = []
    cells = [*columns, "Avg"]
    for (model, method), block in df.groupby(["model", "method"], sort=False):
        by_row = {r: row for r, row in zip(block["row"], block.to_dict("records"))}
        for name, row in by_row.items():
            text = _shown_row(name, row, by_row, cells)
            if text is not None:
                out.append({**row, **text})
            if name == "ours" and "CI low" in by_row:
                low, high = by_row["CI low"], by_row["CI high"]
                out.append({"model": model, "method": method, "row": "95% CI",
                            **{c: f"[{low[c]:.1f}, {high[c]:.1f}]" if not missing(low[c]) else "-" for c in cells}})
    frame = pd.DataFrame(out, columns=df.columns)
    for col in ("params", "step s", "seeds"):
        frame[col] = [_cell_text(col, v) for v in frame[col]]
    return frame


def _shown_row(name: str, row: dict, by_row: dict, cells: list[str]) -> dict | None:
    """The text of one of `build`'s rows, None for the rows only the csv keeps."""
    if name == "ours":
        std = by_row.get("std", {})
        return {c: _number(row[c]) + (f" ± {std[c]:.1f}" if not missing(std.get(c)) else "") for c in cells}
    if name.startswith("Δ vs ") and " CI " not in name:
        ref = name.removeprefix("Δ vs ")
        part = lambda prefix, c: by_row.get(prefix.format(ref), {}).get(c)  # noqa: E731
        return {c: _comparison_text(row[c], part("p adj vs {}", c), part("Δ vs {} CI low", c),
                                    part("Δ vs {} CI high", c), part("significant vs {}", c)) for c in cells}
    if name.startswith("paper (") or name in ("tuned lr", "vs paper"):
        return {c: _number(row[c]) for c in cells}
    if name == "Δ ours - paper":
        low, high = by_row.get("Δ ours - paper CI low", {}), by_row.get("Δ ours - paper CI high", {})
        return {c: _number(row[c], signed=True) + (f" [{low[c]:+.1f}, {high[c]:+.1f}]" if not missing(low.get(c)) else "")
                for c in cells}
    return None


def _number(value, signed: bool = False) -> str:
    if missing(value):
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def p_text(p: float) -> str:
    """`p<0.01` below 0.01 (never `p 0.00`), else two decimals."""
    return "p<0.01" if p < 0.01 else f"p {p:.2f}"


def _comparison_text(difference, p, low, high, significant) -> str:
    if missing(difference):
        return "-"
    star = "*" if significant == 1.0 else ""
    text = f"{difference:+.1f}{star}"
    if not missing(low):
        text += f" [{low:+.1f}, {high:+.1f}]"
    if not missing(p):
        text += f" ({p_text(p)})"
    return text


def _cell_text(column: str, value) -> str:
    if missing(value):
        return ""
    if column == "step s":
        return f"{value:.2f}"
    if column == "seeds":
        return str(int(value))
    return str(value)


def caption(title: str, df: pd.DataFrame, profile_description: str, datasets: list[str], reference_model: str | None,
            note: str | None = None, short=str, evidence_shown: bool = False, numbers: pd.DataFrame | None = None,
            judging: Judging | None = None, evidence: Evidence | None = None) -> str:
    """The table's caption; with `evidence_shown`, what each interval, test and verdict of `numbers` (build's
    rows) is, how many tests there are and how they are adjusted."""
    sizes, absent = sizes_of_test_sets(df, datasets, short)
    text = (f"{title}. Profile: {profile_description}. Protocol: {protocol_description(df, short)}. "
            f"Test examples: {sizes}; accuracy in %; 'step s' is the mean training step time of our run.")
    if absent:
        text += f" No test data for {', '.join(absent)} ('-'); Avg is shown only when all {len(datasets)} sets are present."
    if reference_model:
        text += f" Paper rows are the published numbers; a model without its own paper row is compared with {reference_model}."
    text += best_epoch_caption(df)
    if evidence_shown:
        text += evidence_caption(numbers, df, judging or Judging.from_table(), evidence)
    if "lr_factor" in df and df.lr_factor.notna().any():
        text += (" 'tuned lr': per run group (one task's runs; one run for every commonsense set), the test scores at "
                 "the lr factor of the search (the recipe's lr times each of meta.tune_lr.factors) with the lowest held-out "
                 "loss, never a test score; 'ours' is the recipe's own lr.")
    if (df.status != "finished").any():
        text += " 'failed': every run of that row failed or diverged (its result file says why)."
    if recipe_sources(df):
        text += f" {recipe_sources(df)}"
    if data_notes(df):
        text += f" {data_notes(df)}"
    if engine_notes(df):
        text += f" {engine_notes(df)}"
    if note:
        text += f" {note}"
    return text


def best_epoch_caption(df: pd.DataFrame) -> str:
    """A best-epoch protocol's cells are the best of N dev-set epochs: optimistic, and said so."""
    if "epochs_scored" not in df or not df.epochs_scored.notna().any():
        return ""
    epochs = int(df.epochs_scored.max())
    return (f" Each cell is the best of up to {epochs} epochs scored on the dev set it reports (Neat's protocol): a "
            "selection on the set that is scored, so optimistic; its interval and Δ come from that epoch's "
            "predictions, and the last epoch's score is the csv's 'last epoch' row.")


def evidence_caption(numbers: pd.DataFrame | None, df: pd.DataFrame, judging: Judging, evidence: Evidence | None) -> str:
    numbers = numbers if numbers is not None else pd.DataFrame(columns=["row", "seeds", "Avg"])
    seeds = numbers[numbers.row == "ours"].seeds.dropna()
    text = " 95% CI (harness/statistics.py):"
    if (seeds == 1).any():
        text += (" one seed: over the test examples (a new test set of the same size; Wilson's score interval, for"
                 " Avg Price-Bonett's, a percentile bootstrap for a whole-set metric), the seed-to-seed spread not in it;")
    if (seeds > 1).any():
        text += (" several seeds: for this test set, over training seeds, mean ± t(S-1) x sd of the per-seed scores / √S"
                 " (Avg: of each run's Avg where one run scored every set, else Welch-Satterthwaite over the sets),"
                 " clipped to the scale; seeds whose scores all agree leave the spread unknown and count as one seed;")
    text = text.rstrip(";") + "."
    p_rows = numbers[numbers.row.astype(str).str.startswith("p vs ")]
    if len(p_rows):
        ref = p_rows.row.iloc[0].removeprefix("p vs ")
        set_columns = [c for c in numbers.columns if c not in ("model", "method", "row", "Avg", "params", "step s", "seeds")]
        per_set = int(p_rows[set_columns].notna().to_numpy().sum())
        avg = int(p_rows["Avg"].notna().sum())
        text += (f" 'Δ vs {ref}': ours - {ref} on the same examples; one seed each: McNemar's exact test on a set's right"
                 f" / wrong answers, else a paired bootstrap; several seeds: Welch's t on the per-seed scores. Avg is"
                 f" the primary comparison, one test per row, unadjusted ({avg} in this table); the per-set p and *"
                 f" are Holm-adjusted within each row ({per_set} tests in {len(p_rows)} rows); * p < 0.05.")
    if (numbers.row == "vs paper").any():
        text += (f" 'vs paper': Δ = ours - paper with ± t(S-1) x s x √(1 + 1/S), the paper's number taken as one more run"
                 f" on the same test set (s: our per-seed spread); reproduced: its 90% interval inside ±"
                 f"{judging.margin_per_set:g} points per set, ±{judging.margin_avg:g} on Avg (two one-sided tests,"
                 " meta.table.reproduction_margin); differs: the 95% interval excludes 0; else inconclusive; one seed: not"
                 " judged" + (", unless the seed spread pooled over the table's several-seed rows is named"
                              if judging.pooled_seed_spread else "") + ".")
    elif (df.profile != "paper").all():
        text += " The paper's numbers are not judged against ours: these cells are not the paper's model at the paper's recipe."
    if evidence is not None and evidence.mismatched:
        text += (f" No interval for {len(evidence.mismatched)} runs whose predictions do not give their reported score"
                 " (written before their predictions were the reported epoch's; rerun them).")
    return text
