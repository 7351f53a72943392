"""Result files -> paper-style tables (markdown, CSV, LaTeX), with the published rows beside ours."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd
from omegaconf import OmegaConf

from harness.config import CONFIG_DIR, experiment_cells, run_id, with_profile
from harness.results import read_result, result_path

SHORT_NAMES = {"boolq": "BoolQ", "piqa": "PIQA", "social_i_qa": "SIQA", "hellaswag": "HellaS", "winogrande": "WinoG",
               "ARC-Easy": "ARC-e", "ARC-Challenge": "ARC-c", "openbookqa": "OBQA"}
METHOD_NAMES = {"lora": "LoRA", "dora": "DoRA", "pissa": "PiSSA", "milora": "MiLoRA", "neat": "Neat", "full": "Full FT",
                "rosa": "RoSA", "spa": "SpA"}
PROTOCOL_DESCRIPTIONS = {
    "paper_gen": "paper_gen (Alpaca prompt, beam search with 4 beams, 32 new tokens, first-match answer extraction, exact match)",
}


def published(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "published" / f"{name}.yaml"), resolve=True)


def _params(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _avg(values: list[float | None]) -> float | None:
    """The macro mean, only when every set has a number (SPEC 2.1)."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None
    return sum(values) / len(values)


def collect(results_dir: str | Path, cells: Iterable) -> tuple[list[Mapping], list[str]]:
    """The result of every grid cell that has one (found by run id), and the ids still missing."""
    found, missing = [], []
    for cfg in cells:
        rid = run_id(cfg)
        path = result_path(results_dir, rid)
        if path.is_file():
            found.append(read_result(path))
        else:
            missing.append(rid)
    protocols = {r["protocol"] for r in found}
    if len(protocols) > 1:
        raise ValueError(f"results mix protocols {sorted(protocols)}; a table never mixes them")
    return found, missing


def build(results: list[Mapping], datasets: list[str], paper: Mapping, reference_model: str | None) -> pd.DataFrame:
    """One block per (model, method): our row, the paper's row, and ours minus the paper's."""
    columns = [SHORT_NAMES.get(d, d) for d in datasets]
    paper_cols = paper.get("columns", datasets)
    by_key: dict[tuple[str, str], list[Mapping]] = {}
    for r in results:
        by_key.setdefault((r["model"], r["method"]), []).append(r)
    rows = []
    for (model, method), runs in sorted(by_key.items(), key=lambda kv: (kv[0][0], list(METHOD_NAMES).index(kv[0][1]) if kv[0][1] in METHOD_NAMES else 99)):
        ours = []
        for d in datasets:
            values = [run["metrics"][d]["accuracy"] for run in runs if d in run["metrics"]]
            ours.append(sum(values) / len(values) if values else None)
        label = METHOD_NAMES.get(method, method)
        trainable = runs[0]["params"]["trainable"]
        base = {"model": model, "method": label}
        step_times = [run["train"]["step_seconds_mean"] for run in runs if run.get("train", {}).get("step_seconds_mean")]
        rows.append({**base, "row": "ours", **dict(zip(columns, ours)), "Avg": _avg(ours),
                     "params": f"{_params(trainable)} ({runs[0]['params']['trainable_percent']:.2f}%)",
                     "step s": sum(step_times) / len(step_times) if step_times else None, "seeds": len(runs)})
        paper_model = runs[0].get("paper_model") or reference_model
        paper_row = (paper.get("rows", {}).get(paper_model) or {}).get(method)
        if paper_row:
            values = [paper_row[paper_cols.index(d)] if d in paper_cols else None for d in datasets]
            paper_avg = (paper.get("avg", {}).get(paper_model) or {}).get(method, _avg(values))
            rows.append({**base, "row": f"paper ({paper_model})", **dict(zip(columns, values)), "Avg": paper_avg})
            diffs = [o - p if o is not None and p is not None else None for o, p in zip(ours, values)]
            avg_ours = _avg(ours)
            rows.append({**base, "row": "Δ ours - paper", **dict(zip(columns, diffs)),
                         "Avg": avg_ours - paper_avg if avg_ours is not None and paper_avg is not None else None})
    return pd.DataFrame(rows, columns=["model", "method", "row", *columns, "Avg", "params", "step s", "seeds"])


def caption(title: str, results: list[Mapping], profile_description: str, datasets: list[str], reference_model: str | None) -> str:
    protocol = results[0]["protocol"] if results else "-"
    sizes = {}
    for r in results:
        for d, m in r["metrics"].items():
            sizes[d] = m["n"]
    per_set = ", ".join(f"{SHORT_NAMES.get(d, d)} {sizes[d]}" for d in datasets if d in sizes) or "none"
    absent = [SHORT_NAMES.get(d, d) for d in datasets if d not in sizes]
    text = (f"{title}. Profile: {profile_description}. Protocol: {PROTOCOL_DESCRIPTIONS.get(protocol, protocol)}. "
            f"Test examples: {per_set} ({sum(sizes.values())} in all); accuracy in %; 'step s' is the mean "
            f"training step time of our run.")
    if absent:
        text += f" No test data for {', '.join(absent)} ('-'); Avg is shown only when all {len(datasets)} sets are present."
    if reference_model:
        text += f" Paper rows are the published numbers; a model without its own paper row is compared with {reference_model}."
    return text


def _fmt(v, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:+.1f}" if signed else f"{v:.1f}"
    return str(v)


def write(df: pd.DataFrame, text: str, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = df.copy().astype(object)
    signed = [str(r).startswith("Δ") for r in shown["row"]]
    for col in shown.columns:
        if col in ("step s", "seeds"):
            shown[col] = [f"{v:.2f}" if col == "step s" and isinstance(v, float) and not math.isnan(v) else
                          (str(int(v)) if isinstance(v, (int, float)) and not math.isnan(v) else "") for v in shown[col]]
        elif col not in ("model", "method", "row", "params"):
            shown[col] = [_fmt(v, s) for v, s in zip(shown[col], signed)]
    shown["params"] = shown["params"].fillna("")
    paths = [out_dir / f"{name}.md", out_dir / f"{name}.csv", out_dir / f"{name}.tex"]
    paths[0].write_text(f"{text}\n\n{shown.to_markdown(index=False, disable_numparse=True)}\n")
    df.to_csv(paths[1], index=False, float_format="%.2f")
    paths[2].write_text(shown.to_latex(index=False, caption=text, label=f"tab:{name}", escape=True))
    return paths


def make_table(base, cells) -> list[Path]:
    """Builds the table of an experiment (`base`) from the result files of its grid cells."""
    results, missing = collect(base.run.results_dir, cells)
    if missing:
        print(f"[harness] {len(missing)} of {len(cells)} runs have no result yet: {', '.join(missing)}", flush=True)
    datasets = list(base.task.datasets)
    reference = base.table.get("reference_model")
    df = build(results, datasets, published(base.table.published), reference)
    text = caption(base.table.title, results, base.profile.description, datasets, reference)
    paths = write(df, text, Path(base.run.results_dir) / "tables", base.experiment_name)
    print(f"[harness] {len(results)} runs -> {', '.join(str(p) for p in paths)}", flush=True)
    return paths


def main(argv: list[str] | None = None) -> None:
    try:
        base, cells = experiment_cells(with_profile(sys.argv[1:] if argv is None else argv))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    paths = make_table(base, cells)
    print(paths[0].read_text())


if __name__ == "__main__":
    main()
