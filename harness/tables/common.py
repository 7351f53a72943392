"""What every table layout shares: names, the published numbers, finding results, formatting and writing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import pandas as pd
from omegaconf import OmegaConf

from harness.config import CONFIG_DIR

from harness.identity import run_id
from harness.errors import ConfigError
from harness.results import frame, read_result, result_path


def published(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "published" / f"{name}.yaml"), resolve=True)


def short_namer(task_name: str):
    """dataset -> the column a table shows, as the benchmark names it (the experiment's own benchmark first, then
    any benchmark that names the set: RoSA's table has GSM8K, ViGGO and SQL columns from three benchmarks)."""
    from harness import benchmarks

    own = benchmarks.get(task_name)
    others = [benchmarks.get(name) for name in benchmarks.names() if name != task_name]

    def short(dataset: str) -> str:
        named = next((b for b in [own, *others] if dataset in b.short_names), own)
        return named.short_name(dataset)
    return short


def data_notes(df: pd.DataFrame) -> str:
    """The benchmarks' notes on runs that did not read the paper's data, once each ("SQL: not RoSA's data ...")."""
    if not len(df) or "data_note" not in df or df["data_note"].isna().all():
        return ""
    return " ".join(f"{note}." for note in dict.fromkeys(df["data_note"].dropna()))


def recipe_sources(df: pd.DataFrame) -> str:
    """"Recipes: <source> (LoRA, PiSSA); ...": where each row's training recipe comes from (its config's
    `training.source`), for the caption."""
    if not len(df) or df["recipe_source"].isna().all():
        return ""
    parts = []
    for source, rows in df.dropna(subset=["recipe_source"]).groupby("recipe_source", sort=False):
        parts.append(f"{source} ({', '.join(dict.fromkeys(rows['label']))})")
    return "Recipes: " + "; ".join(parts) + "."


def protocol_description(df: pd.DataFrame, short=str) -> str:
    """The caption's words for the protocol of these results (its yaml's `description`); where the test sets have
    protocols of their own (RoSA's GSM8K by lm-eval, ViGGO and SQL by exact match), each with its sets."""
    if not len(df):
        return "-"
    described = df.dropna(subset=["dataset"]).drop_duplicates("dataset")
    by_protocol = described.groupby("protocol_description", sort=False)["dataset"].apply(list)
    if len(by_protocol) <= 1:
        return str(df["protocol_description"].iloc[0])
    return "; ".join(f"{', '.join(short(d) for d in sets)}: {text}" for text, sets in by_protocol.items())


def params_text(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


FAILED = "failed"  # what a table shows in the cells of a run that failed or diverged


def collect(results_dir: str | Path, cells: Iterable) -> tuple[pd.DataFrame, list[str], list[dict]]:
    """The results of the grid's cells that have one (found by run id; failed runs included, their cells show
    `failed`) as one frame (`harness.results.frame`), the ids still missing, and the result records read."""
    found, absent, points = [], [], {}
    for cfg in cells:
        rid = run_id(cfg)
        path = result_path(results_dir, rid)
        point = cfg.meta.get("lr_point") or {}
        points[rid] = (point.get("factor"), bool(point.get("paper_recipe", True)))
        if path.is_file():
            found.append(read_result(path))
        else:
            absent.append(rid)
    df = frame(found)
    # where the cell sits in a learning-rate search (harness.grid.lr_search_cells): from the grid, not the file
    df["lr_factor"] = [points.get(rid, (None, True))[0] for rid in df.run_id]
    df["paper_recipe"] = [points.get(rid, (None, True))[1] for rid in df.run_id]
    check_one_protocol_per_set(df)
    return df, absent, found


def check_one_protocol_per_set(df: pd.DataFrame) -> None:
    """A table's sets may have protocols of their own (RoSA's GSM8K by lm-eval, ViGGO and SQL by exact match;
    MiLoRA Table 5's GSM8K and HumanEval), but a column never mixes two."""
    per_set = df.dropna(subset=["dataset"]).groupby("dataset")["protocol"].unique()
    mixed = {d: sorted(p) for d, p in per_set.items() if len(p) > 1}
    if mixed:
        raise ConfigError(f"results mix protocols within a test set ({mixed}); a table column never mixes them")


def sizes_of_test_sets(df: pd.DataFrame, datasets: list[str], short) -> tuple[str, list[str]]:
    """"BoolQ 40, PIQA 40 (80 in all)" and the short names of the sets no result has (`short`: dataset -> name)."""
    sizes = df.dropna(subset=["dataset"]).groupby("dataset")["n"].max().to_dict()
    per_set = ", ".join(f"{short(d)} {int(sizes[d])}" for d in datasets if d in sizes) or "none"
    return f"{per_set} ({int(sum(sizes.values()))} in all)", [short(d) for d in datasets if d not in sizes]


def _cell(column: str, value, signed: bool) -> str:
    if missing(value):
        return "-" if column not in ("params", "seeds") else ""
    if column == "step s":
        return f"{value:.2f}"
    if column == "seeds":
        return str(int(value))
    if isinstance(value, float):
        return f"{value:+.1f}" if signed else f"{value:.1f}"
    return str(value)


def formatted(df: pd.DataFrame) -> pd.DataFrame:
    """`df`'s numbers as a table's text: one decimal, rows labelled "Δ..." and columns named "Δ..." signed."""
    shown = df.copy().astype(object)
    delta_rows = [str(r).startswith("Δ") for r in shown["row"]] if "row" in shown else [False] * len(shown)
    for col in shown.columns:
        shown[col] = [_cell(col, v, s or str(col).startswith("Δ")) for v, s in zip(shown[col], delta_rows)]
    return shown


def write(df: pd.DataFrame, text: str, out_dir: Path, name: str, shown: pd.DataFrame | None = None) -> list[Path]:
    """<name>.md (caption + table), .csv (the numbers) and .tex. `shown`: the md / tex rows as text (a layout's
    own rendering, fewer rows than the csv's); else `df` formatted, rows labelled "Δ..." and columns named "Δ..."
    signed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = formatted(df) if shown is None else shown
    paths = [out_dir / f"{name}.md", out_dir / f"{name}.csv", out_dir / f"{name}.tex"]
    paths[0].write_text(f"{text}\n\n{shown.to_markdown(index=False, disable_numparse=True)}\n")
    df.to_csv(paths[1], index=False, float_format="%.2f")
    latex = shown.replace(LATEX_WORDS, regex=True)
    paths[2].write_text(latex.to_latex(index=False, caption=_latex_text(text), label=f"tab:{name}", escape=True))
    return paths


LATEX_WORDS = {"✓": "(in)", "✗": "(out)", "±": "+/-"}  # (LaTeX without extra packages has no ✓ / ✗ / ±)


def _latex_text(text: str) -> str:
    for sign, words in LATEX_WORDS.items():
        text = text.replace(sign, words)
    return text
