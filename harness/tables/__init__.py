"""Result files -> paper-style tables (markdown, CSV, LaTeX), with the published numbers beside ours.

An experiment names its layout in `meta.table.layout`: `datasets` (a column per test set, MiLoRA Table 1) or
`budget` (rows grouped by parameter budget, RoSA's table). `python -m harness.tables experiment=<name>`
rebuilds a table from the result files already written, without running anything.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.config import with_profile

from harness.grid import experiment_cells
from harness.errors import ConfigError
from harness.tables import budget, datasets
from harness.tables.common import collect, formatted, published, short_namer, write
from harness.tables.evidence import Evidence

LAYOUTS = ("datasets", "budget")


def profile_description(base) -> str:
    """The experiment's own words for the active profile's sizing, else the profile's."""
    return (base.meta.table.get("profile_descriptions") or {}).get(base.meta.profile.name) or base.meta.profile.description


@dataclass
class TableFrames:
    """An experiment's table: the numbers (the csv's rows), the rows shown in md / tex / html as text, the
    caption, the results' frame it was built from and the run ids that have no result yet."""

    numbers: pd.DataFrame
    shown: pd.DataFrame
    caption: str
    runs: pd.DataFrame
    absent: list[str]
    evidence: Evidence
    records: list[dict]    # the result files, as read


def table_frames(base, cells) -> TableFrames:
    """Builds the table of an experiment (`base`) from the result files of its grid cells."""
    runs, absent, records = collect(base.meta.run.results_dir, cells)
    table = base.meta.table
    layout = table.get("layout", "datasets")
    # the columns: the profile's own where its data differ (image mini: Fashion-MNIST, digits), else the task's
    names = list((table.get("columns") or {}).get(base.meta.profile.name) or base.task.datasets)
    paper = published(table.published)
    description = profile_description(base)
    short = short_namer(base.task.name)
    evidence = Evidence(base.meta.run.results_dir, runs, table.get("reference_method") or "lora")
    if layout == "datasets":
        judging = datasets.Judging.from_table(table)
        df = datasets.build(runs, names, paper, table.get("reference_model"), short, evidence, judging)
        shown = datasets.shown(df, [short(d) for d in names])
        text = datasets.caption(table.title, runs, description, names, table.get("reference_model"), table.get("note"),
                                short, evidence_shown=True, numbers=df, judging=judging, evidence=evidence)
    elif layout == "budget":
        fractions, labels = [float(f) for f in table.budget_fractions], list(table.budget_labels)
        margin = datasets.Judging.from_table(table).margin_per_set
        df = budget.build(runs, names, paper, fractions, labels, short, evidence, margin)
        shown = formatted(df)
        text = budget.caption(table.title, runs, description, names, paper, fractions, labels, table.get("note"), short,
                              margin)
    else:
        raise ConfigError(f"meta.table.layout={layout!r} in experiment {base.meta.experiment_name}: use one of {LAYOUTS}")
    return TableFrames(df, shown, text, runs, absent, evidence, records)


def make_table(base, cells) -> list[Path]:
    """Writes the table of an experiment (`base`) from the result files of its grid cells: md, csv, tex."""
    frames = table_frames(base, cells)
    if frames.absent:
        print(f"[harness] {len(frames.absent)} of {len(cells)} runs have no result yet: {', '.join(frames.absent)}",
              flush=True)
    paths = write(frames.numbers, frames.caption, Path(base.meta.run.results_dir) / "tables", base.meta.experiment_name,
                  frames.shown)
    print(f"[harness] {frames.runs.run_id.nunique()} runs -> {', '.join(str(p) for p in paths)}", flush=True)
    return paths


def main(argv: list[str] | None = None) -> None:
    from harness.errors import cli_errors

    with cli_errors():
        base, cells = experiment_cells(with_profile(sys.argv[1:] if argv is None else argv))
        paths = make_table(base, cells)
    print(paths[0].read_text())
