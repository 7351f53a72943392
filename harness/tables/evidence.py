"""The evidence behind a table's numbers, from the runs' prediction files (harness.statistics): each row's
95% interval per set and for Avg, its paired comparison with the reference method's row of the same model (LoRA
unless the experiment's `table.reference_method` names another), and whether a published number lies inside our
interval. A run without a predictions file (lm-eval) has no interval; its cells show none.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.results import read_predictions
from harness.statistics import Comparison, SetRuns, compare, interval


class Evidence:
    def __init__(self, results_dir: str | Path, df: pd.DataFrame, reference_method: str = "lora"):
        self.results_dir = Path(results_dir)
        self.reference_method = reference_method
        self._predictions: dict[str, dict[str, list[dict]]] = {}
        self._scorers: dict[tuple, object] = {}
        self.df = df

    def _rows(self, run_id: str) -> dict[str, list[dict]]:
        if run_id not in self._predictions:
            self._predictions[run_id] = read_predictions(self.results_dir, run_id)
        return self._predictions[run_id]

    def _headline(self, run: pd.Series):
        """None for a mean of `correct`; else the set's scorer recomputing its headline (GLUE's Matthews)."""
        if run.metric in (None, "accuracy") or pd.isna(run.metric):
            return None
        key = (run.task, run.protocol)
        if key not in self._scorers:
            from harness import benchmarks

            self._scorers[key] = benchmarks.get(run.task).scorer(run.protocol)
        scorer, name = self._scorers[key], run.dataset
        return lambda rows: scorer.summarize(name, rows)["accuracy"]

    def set_runs(self, runs: pd.DataFrame, dataset: str) -> SetRuns | None:
        """The finished runs of one table row on one test set: their prediction rows, a list per seed."""
        done = runs[(runs.status == "finished") & (runs.dataset == dataset)].sort_values("seed", kind="stable")
        if not len(done):
            return None
        seeds = []
        for run_id in done.run_id:
            rows = self._rows(run_id).get(dataset)
            if not rows:
                return None
            seeds.append(rows)
        return SetRuns(seeds, self._headline(done.iloc[0]))

    def intervals(self, runs: pd.DataFrame, datasets: list[str]) -> tuple[dict, tuple | None]:
        """({set: (low, high) or None}, Avg's (low, high) or None: only when every set has its evidence)."""
        sets = {d: self.set_runs(runs, d) for d in datasets}
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
        """({set: Comparison or None}, Avg's): `runs` against `reference` on the same examples."""
        ours = {d: self.set_runs(runs, d) for d in datasets}
        theirs = {d: self.set_runs(reference, d) for d in datasets}
        per_set = {d: compare([ours[d]], [theirs[d]]) if ours[d] is not None and theirs[d] is not None else None
                   for d in datasets}
        pairs = [(ours[d], theirs[d]) for d in datasets]
        avg = compare([a for a, _ in pairs], [b for _, b in pairs]) \
            if pairs and all(a is not None and b is not None for a, b in pairs) else None
        return per_set, avg
