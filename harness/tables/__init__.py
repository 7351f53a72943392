"""Result files -> paper-style tables (markdown, CSV, LaTeX), with the published numbers beside ours.

An experiment names its layout in `table.layout`: `datasets` (a column per test set, MiLoRA Table 1) or
`budget` (rows grouped by parameter budget, RoSA's table). `python -m harness.tables experiment=<name>`
rebuilds a table from the result files already written, without running anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.config import experiment_cells, with_profile
from harness.errors import ConfigError
from harness.tables import budget, datasets
from harness.tables.common import collect, published, short_namer, write
from harness.tables.evidence import Evidence

LAYOUTS = ("datasets", "budget")


def profile_description(base) -> str:
    """The experiment's own words for the active profile's sizing, else the profile's."""
    return (base.table.get("profile_descriptions") or {}).get(base.profile.name) or base.profile.description


def make_table(base, cells) -> list[Path]:
    """Builds the table of an experiment (`base`) from the result files of its grid cells."""
    runs, absent = collect(base.run.results_dir, cells)
    if absent:
        print(f"[harness] {len(absent)} of {len(cells)} runs have no result yet: {', '.join(absent)}", flush=True)
    table = base.table
    layout = table.get("layout", "datasets")
    # the columns: the profile's own where its data differ (image mini: Fashion-MNIST, digits), else the task's
    names = list((table.get("columns") or {}).get(base.profile.name) or base.task.datasets)
    paper = published(table.published)
    description = profile_description(base)
    short = short_namer(base.task.name)
    shown = None
    if layout == "datasets":
        evidence = Evidence(base.run.results_dir, runs, table.get("reference_method") or "lora")
        df = datasets.build(runs, names, paper, table.get("reference_model"), short, evidence)
        shown = datasets.shown(df, [short(d) for d in names])
        text = datasets.caption(table.title, runs, description, names, table.get("reference_model"), table.get("note"),
                                short, evidence_shown=True)
    elif layout == "budget":
        fractions, labels = [float(f) for f in table.budget_fractions], list(table.budget_labels)
        df = budget.build(runs, names, paper, fractions, labels, short)
        text = budget.caption(table.title, runs, description, names, paper, fractions, labels, table.get("note"), short)
    else:
        raise ConfigError(f"table.layout={layout!r} in experiment {base.experiment_name}: use one of {LAYOUTS}")
    paths = write(df, text, Path(base.run.results_dir) / "tables", base.experiment_name, shown)
    print(f"[harness] {runs.run_id.nunique()} runs -> {', '.join(str(p) for p in paths)}", flush=True)
    return paths


def main(argv: list[str] | None = None) -> None:
    from harness.errors import cli_errors

    with cli_errors():
        base, cells = experiment_cells(with_profile(sys.argv[1:] if argv is None else argv))
        paths = make_table(base, cells)
    print(paths[0].read_text())
