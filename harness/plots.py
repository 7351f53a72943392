"""The report's figures (matplotlib, PNG and SVG), drawn from the results' frame (harness.results.frame).

- `params`: score against trainable parameters (log scale), the Pareto front marked (no other run is better
  with fewer parameters);
- `cost`: score against training step time and against peak memory;
- `budget`: score against the trainable share per method, with 95% intervals (the RoSA sweep);
- `loss`: each cell's training loss curve.

A run's score is its mean over the test sets that every finished run of the experiment has (Avg when all have
every set), so points are comparable; the axis label says which sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.statistics import interval


@dataclass
class Figure:
    name: str      # params, cost, budget, loss
    title: str
    png: Path
    svg: Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def shared_sets(df: pd.DataFrame) -> list[str]:
    done = df[(df.status == "finished") & df.dataset.notna()]
    if not len(done):
        return []
    per_run = done.groupby("run_id")["dataset"].apply(set)
    common = set.intersection(*per_run) if len(per_run) else set()
    return [d for d in dict.fromkeys(done.dataset) if d in common]


def scores(df: pd.DataFrame) -> pd.DataFrame:
    """A row per finished run: its label, knob, counts, costs and its score over the shared sets."""
    sets = shared_sets(df)
    done = df[(df.status == "finished") & df.dataset.isin(sets)]
    per_run = done.groupby("run_id").agg(score=("accuracy", "mean"))
    first = done.drop_duplicates("run_id").set_index("run_id")
    return first[["label", "knob", "model", "method", "trainable", "total", "step_s", "peak_mb", "seed"]].join(per_run)


def pareto_front(points: pd.DataFrame, x: str = "trainable", y: str = "score") -> pd.DataFrame:
    """The points no other point beats with as few or fewer parameters (ascending x)."""
    front, best = [], float("-inf")
    for _, row in points.sort_values([x, y], ascending=[True, False]).iterrows():
        if row[y] > best:
            front.append(row)
            best = row[y]
    return pd.DataFrame(front)


def _save(fig, out_dir: Path, stem: str, name: str, title: str) -> Figure:
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{stem}-{name}.png", out_dir / f"{stem}-{name}.svg"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    fig.savefig(svg, bbox_inches="tight")
    _pyplot().close(fig)
    return Figure(name, title, png, svg)


def _score_label(df: pd.DataFrame, short) -> str:
    sets = shared_sets(df)
    return f"score: mean over {', '.join(short(s) for s in sets)} (%)" if sets else "score (%)"


def _log_axes(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def params_figure(df: pd.DataFrame, out_dir: Path, stem: str, short=str) -> Figure | None:
    points = scores(df).dropna(subset=["score", "trainable"])
    if not len(points):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, group in points.groupby("label", sort=False):
        ax.scatter(group.trainable, group.score, label=label, s=36)
    front = pareto_front(points)
    ax.step(front.trainable, front.score, where="post", color="black", linewidth=1, linestyle="--", label="Pareto front")
    _log_axes(ax, "trainable parameters", _score_label(df, short))
    return _save(fig, out_dir, stem, "params", "Score against trainable parameters (Pareto front dashed)")


def cost_figure(df: pd.DataFrame, out_dir: Path, stem: str, short=str) -> Figure | None:
    points = scores(df).dropna(subset=["score"])
    if not len(points) or points[["step_s", "peak_mb"]].isna().all().all():
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, column, label in ((axes[0], "step_s", "training step (s)"), (axes[1], "peak_mb", "peak memory (MB)")):
        for name, group in points.dropna(subset=[column]).groupby("label", sort=False):
            ax.scatter(group[column], group.score, label=name, s=36)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(_score_label(df, short))
    axes[1].legend(fontsize=8)
    return _save(fig, out_dir, stem, "cost", "Score against step time and peak memory")


def budget_figure(df: pd.DataFrame, out_dir: Path, stem: str, evidence, short=str) -> Figure | None:
    """Score against the trainable share per method, each point with its 95% interval (evidence: the
    harness.tables.evidence of these runs)."""
    points = scores(df).dropna(subset=["score"])
    points = points[points.trainable < points.total * 0.5]  # full fine-tuning is no budget point
    if not len(points):
        return None
    sets = shared_sets(df)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, group in points.groupby("label", sort=False):
        group = group.assign(share=100.0 * group.trainable / group.total).sort_values("share")
        lows, highs = [], []
        for run_id, row in group.iterrows():
            found = [evidence.set_runs(df[df.run_id == run_id], d) for d in sets]
            bounds = interval(found) if found and all(f is not None for f in found) else None
            lows.append(row.score - bounds[0] if bounds else 0.0)
            highs.append(bounds[1] - row.score if bounds else 0.0)
        ax.errorbar(group.share, group.score, yerr=[lows, highs], marker="o", capsize=3, label=label)
    _log_axes(ax, "trainable parameters (% of the model)", _score_label(df, short))
    return _save(fig, out_dir, stem, "budget", "Score against budget per method, with 95% intervals")


def loss_figure(records: list[dict], out_dir: Path, stem: str) -> Figure | None:
    """Each finished cell's training loss per optimizer step (records: result files)."""
    curves = [(r, r.get("train", {}).get("loss_curve")) for r in records if r.get("status") == "finished"]
    curves = [(r, c) for r, c in curves if c]
    if not curves:
        return None
    from harness.methods import display

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for record, curve in curves:
        run = record["run"]
        options = (run.get("config") or {}).get("method") or {}
        label = " ".join(p for p in (run.get("model"), display.label(run["method"], options),
                                     display.knob(run["method"], options)) if p)
        seed = (run.get("config") or {}).get("seed")
        ax.plot(range(1, len(curve) + 1), curve, label=f"{label} (seed {seed})", linewidth=1.2,
                marker="o" if len(curve) < 20 else None, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out_dir, stem, "loss", "Training loss per cell")
