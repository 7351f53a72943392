"""The evidence behind a table's numbers, from the runs' prediction files (harness.statistics): each row's
95% interval per set and for Avg, its paired comparison with the reference method's row of the same model (LoRA
unless the experiment's `table.reference_method` names another), and its reproduction verdict against a
published number. A run without a predictions file (lm-eval) has no interval; its cells show none. A run whose
predictions do not give the score its result reports (a best-epoch run written before its predictions were the
best epoch's) has none either, and is counted in `mismatched` for the caption.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from harness.results import read_predictions
from harness.statistics import (Comparison, PooledSpread, SetRuns, Verdict, compare, interval, pooled_spread,
                                reproduction)

AVG = "Avg"
AGREEMENT = 0.05  # points: a recorded score and the same score recomputed from the predictions


class Evidence:
    def __init__(self, results_dir: str | Path, df: pd.DataFrame, reference_method: str = "lora"):
        self.results_dir = Path(results_dir)
        self.reference_method = reference_method
        self._predictions: dict[str, dict[str, list[dict]]] = {}
        self._scorers: dict[tuple, object] = {}
        self.df = df
        self.mismatched: set[str] = set()
        self._sets: dict[tuple, SetRuns | None] = {}

    def _rows(self, run_id: str) -> dict[str, list[dict]]:
        if run_id not in self._predictions:
            self._predictions[run_id] = read_predictions(self.results_dir, run_id)
        return self._predictions[run_id]

    def _headline(self, run: pd.Series):
        """(None, None) for a mean of `correct`; else the set's scorer recomputing its headline (GLUE's Matthews),
        from rows and on many resamples at once."""
        if run.metric in (None, "accuracy") or pd.isna(run.metric):
            return None, None
        key = (run.task, run.protocol)
        if key not in self._scorers:
            from harness import benchmarks

            self._scorers[key] = benchmarks.get(run.task).scorer(run.protocol)
        scorer, name = self._scorers[key], run.dataset
        return (lambda rows: scorer.summarize(name, rows)["accuracy"],
                lambda rows, index: scorer.headline_of_resamples(name, rows, index))

    def set_runs(self, runs: pd.DataFrame, dataset: str) -> SetRuns | None:
        """The finished runs of one table row on one test set: their prediction rows, a list per seed, and their
        run ids (one run scoring several sets has one id in each)."""
        done = runs[(runs.status == "finished") & (runs.dataset == dataset)].sort_values("seed", kind="stable")
        if not len(done):
            return None
        key = (tuple(done.run_id), dataset)
        if key not in self._sets:
            self._sets[key] = self._read_set(done, dataset)
        return self._sets[key]

    def _read_set(self, done: pd.DataFrame, dataset: str) -> SetRuns | None:
        seeds = []
        for run_id in done.run_id:
            rows = self._rows(run_id).get(dataset)
            if not rows or any(r.get("correct") is None for r in rows):  # (AlpacaEval's outputs: judged as a set)
                return None
            seeds.append(rows)
        headline, resampled = self._headline(done.iloc[0])
        found = SetRuns(seeds, headline, list(done.run_id), resampled)
        recorded = done.accuracy.to_numpy(dtype=float)
        off = np.abs(found.per_seed() - recorded) > AGREEMENT
        if off.any():
            self.mismatched.update(done.run_id[off])
            return None
        return found

    def row_sets(self, runs: pd.DataFrame, datasets: list[str]) -> dict[str, SetRuns | None]:
        return {d: self.set_runs(runs, d) for d in datasets}

    def intervals(self, runs: pd.DataFrame, datasets: list[str]) -> tuple[dict, tuple | None]:
        """({set: (low, high) or None}, Avg's (low, high) or None: only when every set has its evidence)."""
        sets = self.row_sets(runs, datasets)
        per_set = {d: interval([s]) if s is not None else None for d, s in sets.items()}
        everything = list(sets.values())
        avg = interval(everything) if everything and all(s is not None for s in everything) else None
        return per_set, avg

    def reference_runs(self, model: str) -> pd.DataFrame | None:
        ref = self.df[(self.df.model == model) & (self.df.method == self.reference_method)]
        if "label_key" in ref:  # the method itself, not a preset over it (LoRA+ is method=lora with its own label)
            ref = ref[ref.label_key == self.reference_method]
        if "paper_recipe" in ref:  # (not the points of a learning-rate search)
            ref = ref[ref.paper_recipe.astype(bool)]
        if not len(ref):
            return None
        first_label = ref.label.iloc[0]  # (one reference row per model: the first of its labels)
        return ref[ref.label == first_label]

    def comparisons(self, runs: pd.DataFrame, reference: pd.DataFrame, datasets: list[str]) -> tuple[dict, Comparison | None]:
        """({set: Comparison or None}, Avg's): `runs` against `reference` on the same examples (p unadjusted)."""
        ours, theirs = self.row_sets(runs, datasets), self.row_sets(reference, datasets)
        per_set = {d: compare([ours[d]], [theirs[d]]) if ours[d] is not None and theirs[d] is not None else None
                   for d in datasets}
        pairs = [(ours[d], theirs[d]) for d in datasets]
        avg = compare([a for a, _ in pairs], [b for _, b in pairs]) \
            if pairs and all(a is not None and b is not None for a, b in pairs) else None
        return per_set, avg

    def pooled_spreads(self, rows: list[pd.DataFrame], datasets: list[str]) -> dict[str, PooledSpread | None]:
        """{set or Avg: a single run's seed variance pooled over the table's rows with several seeds}."""
        found = [self.row_sets(runs, datasets) for runs in rows]
        out = {d: pooled_spread([[sets[d]] for sets in found if sets[d] is not None]) for d in datasets}
        complete = [list(sets.values()) for sets in found if all(s is not None for s in sets.values())]
        out[AVG] = pooled_spread(complete)
        return out

    def verdicts(self, runs: pd.DataFrame, datasets: list[str], paper: Mapping[str, float | None],
                 margins: Mapping[str, float], pooled: Mapping[str, PooledSpread | None] | None = None
                 ) -> dict[str, Verdict | None]:
        """{set or Avg: ours against the paper's number} (`paper`: {set or Avg: the published number}; `margins`:
        {"avg", "per_set"} in points)."""
        sets = self.row_sets(runs, datasets)
        pooled = pooled or {}
        out = {}
        for d in datasets:
            value = paper.get(d)
            out[d] = reproduction([sets[d]], value, float(margins["per_set"]), pooled.get(d)) \
                if value is not None and sets[d] is not None else None
        complete = all(s is not None for s in sets.values())
        value = paper.get(AVG)
        out[AVG] = reproduction(list(sets.values()), value, float(margins["avg"]), pooled.get(AVG)) \
            if value is not None and complete and sets else None
        return out
