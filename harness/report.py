"""A static HTML report of the experiments' results: `make report` -> results/report/index.html.

    python -m harness.report                          # every experiment, the profile chosen from the machine
    python -m harness.report experiment=table1 profile=mini meta.run.results_dir=/tmp/results

One page that opens from disk (no server, no network: the data are in the page, the plots beside it):
every table with its intervals, paired tests, paper rows and Δ, failed cells and runs with no result yet marked;
the figures (harness.plots); where each run comes from (config, versions, git commit, the hashes of its data
and weights); and a per-example browser (filter by test set and method, show only the examples where two
methods disagree). The page is a jinja2 template (harness/templates/report.html.j2). The browser's filters
can be set from the address (`index.html#set=boolq&a=LoRA%20r%3D32&b=DoRA%20r%3D16&disagree=1`, values
URI-encoded), so a view can be shared.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from harness import plots
from harness.config import CONFIG_DIR, with_profile
from harness.grid import experiment_cells
from harness.results import read_predictions
from harness.tables import TableFrames, table_frames
from harness.tables.common import short_namer

TEMPLATE = "report.html.j2"


@dataclass
class Section:
    """One experiment's part of the report."""

    name: str
    title: str
    caption: str
    columns: list[str]
    rows: list[dict]               # the table's shown rows: {"cells": [...], "kind": ours | ci | paper | delta | ...}
    absent: list[str]
    figures: list[plots.Figure] = field(default_factory=list)
    provenance: list[dict] = field(default_factory=list)
    examples: dict = field(default_factory=dict)  # {"methods": [...], "sets": [...], "rows": [...]}


def experiment_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def _row_kind(row: str) -> str:
    if row == "ours":
        return "ours"
    if row == "95% CI":
        return "ci"
    if row == "vs paper":
        return "verdict"
    if row.startswith("paper"):
        return "paper"
    if row.startswith("Δ vs"):
        return "versus"
    if row.startswith("Δ"):
        return "delta"
    return "other"


def _table_rows(frames: TableFrames) -> tuple[list[str], list[dict]]:
    shown = frames.shown.fillna("")
    columns = [str(c) for c in shown.columns]
    rows = []
    for record in shown.to_dict("records"):
        cells = [str(record[c]) for c in shown.columns]
        rows.append({"cells": cells, "kind": _row_kind(str(record.get("row", "")))})
    return columns, rows


def _provenance(records: list[dict]) -> list[dict]:
    out = []
    for record in records:
        run = record["run"]
        git = run.get("git") or {}
        out.append({
            "id": run["id"], "status": record["status"], "model": run.get("model"), "method": run.get("method"),
            "seed": (run.get("config") or {}).get("seed"),
            "commit": git.get("commit") or "-", "dirty": git.get("dirty"),
            "versions": ", ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items()),
            # what the run read: each data file or weight package by role, with its hash
            "inputs": [{"role": i.get("role"), "where": i.get("path") or i.get("id") or i.get("kind"),
                        "sha256": (i.get("sha256") or "-")[:16], "size": i.get("size")}
                       for i in run.get("inputs") or [] if isinstance(i, dict)],
            "config": yaml.safe_dump(run.get("config") or {}, sort_keys=False, allow_unicode=True),
            "error": (record.get("failure") or {}).get("error"),
            "ended": run.get("ended_at"),
        })
    return out


def _run_names(frames: TableFrames) -> dict[str, str]:
    """run id -> the browser's name for it: the label and its knob (the model too where several), and the seed
    where a row has several."""
    runs = frames.runs[frames.runs.status == "finished"].drop_duplicates("run_id")
    models = runs.model.nunique() > 1
    names: dict[str, str] = {}
    for _, group in runs.groupby(["model", "label", "knob"], sort=False, dropna=False):
        for run in group.itertuples():
            name = " ".join(str(p) for p in ((run.model if models else None), run.label, run.knob) if p and pd.notna(p))
            if len(group) > 1 and pd.notna(run.seed):
                name += f" (seed {int(run.seed)})"
            if name in names.values():  # (two runs alike in all of these: the run id tells them apart)
                name += f" [{run.run_id[-6:]}]"
            names[run.run_id] = name
    return names


def _examples(frames: TableFrames, results_dir: Path) -> dict:
    names = _run_names(frames)
    table: dict[tuple, dict] = {}
    sets: list[str] = []
    for run_id, name in names.items():
        for dataset, rows in read_predictions(results_dir, run_id).items():
            if dataset not in sets:
                sets.append(dataset)
            for row in rows:
                key = (dataset, row["index"])
                entry = table.setdefault(key, {"set": dataset, "index": row["index"],
                                               "answer": row.get("answer", row.get("label")), "by": {}})
                entry["by"][name] = [str(row.get("prediction")), bool(row.get("correct"))]
    return {"methods": list(names.values()), "sets": sets, "rows": list(table.values())}


def section(base, cells, out_dir: Path) -> Section:
    results_dir = Path(base.meta.run.results_dir)
    frames = table_frames(base, cells)
    columns, rows = _table_rows(frames)
    records = frames.records  # (read once, by the table)
    short = short_namer(base.task.name)
    stem = base.meta.experiment_name
    figure_dir = out_dir / "plots"
    figures = [plots.params_figure(frames.runs, figure_dir, stem, short), plots.cost_figure(frames.runs, figure_dir, stem, short)]
    if base.meta.table.get("layout") == "budget":
        figures.append(plots.budget_figure(frames.runs, figure_dir, stem, frames.evidence, short))
    figures.append(plots.loss_figure(records, figure_dir, stem))
    return Section(stem, str(base.meta.table.title), frames.caption, columns, rows, frames.absent,
                   [f for f in figures if f is not None], _provenance(records), _examples(frames, results_dir))


def render(sections: list[Section], out_dir: Path, profile: str) -> Path:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("harness", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    # the data the browser filters, as JSON inside the page (a page opened from disk may not fetch files);
    # "</" escaped so that no value can close the script element
    data = json.dumps({s.name: s.examples for s in sections}).replace("</", "<\\/")
    page = env.get_template(TEMPLATE).render(sections=sections, examples_json=data, profile=profile,
                                             built=time.strftime("%Y-%m-%d %H:%M"),
                                             relative=lambda p: Path(p).relative_to(out_dir).as_posix())
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(page)
    return path


def build(overrides: list[str]) -> Path:
    """The report for the experiment named in `overrides` (else every experiment), under <results>/report."""
    named = [o for o in overrides if o.startswith("experiment=")]
    experiments = [named[-1].split("=", 1)[1]] if named else experiment_names()
    rest = [o for o in overrides if not o.startswith("experiment=")]
    sections, profile, out_dir = [], None, None
    for name in experiments:
        base, cells = experiment_cells(with_profile([f"experiment={name}", *rest]))
        out_dir = out_dir or Path(base.meta.run.results_dir) / "report"
        profile = base.meta.profile.name
        found = section(base, cells, out_dir)
        if found.rows or named:  # an experiment with no result at all is left out (unless asked for)
            sections.append(found)
    path = render(sections, out_dir, profile or "-")
    print(f"[harness] report: {path} ({len(sections)} experiments)", flush=True)
    return path


def main(argv: list[str] | None = None) -> None:
    from harness.errors import cli_errors

    with cli_errors():
        build(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
