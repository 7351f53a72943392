"""How sure a table can be: confidence intervals and paired tests from the runs' per-example predictions.

A cell's number is a mean over a few hundred test examples (a mini cell: 40, where one standard error is ~7
points), and often over one seed. Every interval here resamples what the number was computed from:

- `interval`: a 95% interval for a cell (one test set, its seeds) or for Avg (the macro mean over the sets,
  each set resampled on its own). One seed: scipy.stats.bootstrap over the test examples (BCa). Several seeds:
  a two-level bootstrap, seeds then examples, percentile. It is written here because scipy resamples one level
  only, and an interval over examples alone would hide how much the seeds disagree.
- `compare`: a method against the reference (LoRA) on the same examples. Right / wrong scores of one seed each:
  McNemar's exact test on the examples where the two disagree (statsmodels). Otherwise (a Matthews or Pearson
  headline, several seeds, Avg): a paired bootstrap of the difference, both methods resampled with the same
  examples; significant at 5% when its 95% interval excludes 0.

The headline of a set is what its scorer computes from prediction rows (`Scorer.summarize`): the mean of the
rows' `correct` for accuracy (resampled as arrays), or a metric of the whole set (GLUE's Matthews, Pearson),
recomputed on every resample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000      # accuracy: vectorised means, cheap
METRIC_RESAMPLES = 500  # a whole-set metric recomputed in Python per resample (GLUE dev sets: ~1k rows)
SEED = 0              # the resampling is seeded: a table rebuilt from the same files shows the same intervals

Headline = Callable[[list[dict]], float]  # prediction rows -> the set's headline number (x 100)


@dataclass
class SetRuns:
    """One test set's prediction rows of one table row: a list per seed, each in the test set's order, and
    the headline computed from rows (`None`: the mean of `correct`, x 100)."""

    seeds: list[list[dict]]
    headline: Headline | None = None

    @property
    def n(self) -> int:
        return len(self.seeds[0]) if self.seeds else 0

    def correct(self) -> np.ndarray:
        """(seeds x examples) 0 / 1, built once."""
        if getattr(self, "_correct", None) is None:
            self._correct = np.array([[bool(r["correct"]) for r in rows] for rows in self.seeds], dtype=float)
        return self._correct

    def value(self, seed: int, index: np.ndarray) -> float:
        """The headline of seed `seed` on the examples `index` (a resample)."""
        if self.headline is None:
            return 100.0 * float(np.mean(self.correct()[seed, index]))
        rows = self.seeds[seed]
        return float(self.headline([rows[i] for i in index]))


def _aligned(runs: Sequence[SetRuns]) -> bool:
    return all(r.seeds and len({len(rows) for rows in r.seeds}) == 1 and r.n for r in runs)


def interval(sets: Sequence[SetRuns]) -> tuple[float, float] | None:
    """The 95% interval of the macro mean over `sets` (one set: the cell itself). None without predictions."""
    if not sets or not _aligned(sets):
        return None
    rng = np.random.default_rng(SEED)
    if all(len(s.seeds) == 1 for s in sets):
        return _one_seed_interval(sets, rng)
    return _two_level_interval(sets, rng)


def _one_seed_interval(sets: Sequence[SetRuns], rng) -> tuple[float, float]:
    from scipy.stats import bootstrap

    if all(s.headline is None for s in sets):
        samples = tuple(100.0 * s.correct()[0] for s in sets)
        if all(np.ptp(x) == 0 for x in samples):  # every example alike: no spread to resample
            value = float(np.mean([x[0] for x in samples]))
            return value, value

        def statistic(*xs, axis=-1):
            return np.mean([x.mean(axis=axis) for x in xs], axis=0)
        result = bootstrap(samples, statistic, vectorized=True, paired=False, n_resamples=RESAMPLES,
                           confidence_level=CONFIDENCE, method="BCa" if len(sets) == 1 else "percentile", rng=rng)
    else:  # a whole-set metric: resample example indices, recompute it
        indices = tuple(np.arange(s.n) for s in sets)

        def statistic(*idx):
            return float(np.mean([s.value(0, i) for s, i in zip(sets, idx)]))
        result = bootstrap(indices, statistic, vectorized=False, paired=False, n_resamples=METRIC_RESAMPLES,
                           confidence_level=CONFIDENCE, method="percentile", rng=rng)
    low, high = result.confidence_interval
    return float(low), float(high)


def _two_level_interval(sets: Sequence[SetRuns], rng) -> tuple[float, float]:
    resamples = RESAMPLES if all(s.headline is None for s in sets) else METRIC_RESAMPLES
    values = np.empty(resamples)
    tables = [s.correct() if s.headline is None else None for s in sets]
    for b in range(resamples):
        per_set = []
        for s, table in zip(sets, tables):
            seeds = rng.integers(0, len(s.seeds), len(s.seeds))
            index = rng.integers(0, s.n, s.n)
            if table is not None:
                per_set.append(100.0 * table[np.ix_(seeds, index)].mean())
            else:
                per_set.append(np.mean([s.value(k, index) for k in seeds]))
        values[b] = np.mean(per_set)
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


@dataclass
class Comparison:
    """A method against the reference on the same examples: ours - reference, the test, its p-value (McNemar)
    or the difference's 95% interval (bootstrap), and whether it is significant at 5%."""

    difference: float
    test: str
    significant: bool
    p_value: float | None = None
    low: float | None = None
    high: float | None = None


def compare(ours: Sequence[SetRuns], reference: Sequence[SetRuns]) -> Comparison | None:
    """`ours` against `reference`, set by set (the same sets in the same order; one set: a cell, several:
    Avg). None when the predictions are missing or the two were not scored on the same examples."""
    if not ours or len(ours) != len(reference) or not _aligned(ours) or not _aligned(reference):
        return None
    if any(a.n != b.n or not _same_examples(a, b) for a, b in zip(ours, reference)):
        return None
    point = float(np.mean([_mean_headline(a) - _mean_headline(b) for a, b in zip(ours, reference)]))
    one_seed = all(len(s.seeds) == 1 for s in (*ours, *reference))
    if len(ours) == 1 and one_seed and ours[0].headline is None and reference[0].headline is None:
        return _mcnemar(ours[0], reference[0], point)
    return _paired_bootstrap(ours, reference, point)


def _same_examples(a: SetRuns, b: SetRuns) -> bool:
    key = ("index", "answer", "label")
    first_a, first_b = a.seeds[0], b.seeds[0]
    return all(tuple(x.get(k) for k in key) == tuple(y.get(k) for k in key) for x, y in zip(first_a, first_b))


def _mean_headline(s: SetRuns) -> float:
    everything = np.arange(s.n)
    return float(np.mean([s.value(k, everything) for k in range(len(s.seeds))]))


def _mcnemar(a: SetRuns, b: SetRuns, point: float) -> Comparison:
    from statsmodels.stats.contingency_tables import mcnemar

    x, y = a.correct()[0].astype(bool), b.correct()[0].astype(bool)
    table = [[int(np.sum(x & y)), int(np.sum(x & ~y))], [int(np.sum(~x & y)), int(np.sum(~x & ~y))]]
    if table[0][1] + table[1][0] == 0:  # the two agree on every example
        return Comparison(point, "McNemar", False, 1.0)
    p = float(mcnemar(table, exact=True).pvalue)
    return Comparison(point, "McNemar", p < 1 - CONFIDENCE, p)


def _paired_bootstrap(ours: Sequence[SetRuns], reference: Sequence[SetRuns], point: float) -> Comparison:
    """Both sides resampled with the same example indices (and, with several seeds, their seeds resampled too)."""
    rng = np.random.default_rng(SEED)
    cheap = all(s.headline is None for s in (*ours, *reference))
    resamples = RESAMPLES if cheap else METRIC_RESAMPLES
    tables = [(a.correct(), b.correct()) if cheap else None for a, b in zip(ours, reference)]
    values = np.empty(resamples)
    for r in range(resamples):
        per_set = []
        for (a, b), table in zip(zip(ours, reference), tables):
            index = rng.integers(0, a.n, a.n)
            seeds_a = rng.integers(0, len(a.seeds), len(a.seeds))
            seeds_b = rng.integers(0, len(b.seeds), len(b.seeds))
            if table is not None:
                per_set.append(100.0 * (table[0][np.ix_(seeds_a, index)].mean() - table[1][np.ix_(seeds_b, index)].mean()))
            else:
                per_set.append(np.mean([a.value(k, index) for k in seeds_a]) - np.mean([b.value(k, index) for k in seeds_b]))
        values[r] = np.mean(per_set)
    alpha = (1 - CONFIDENCE) / 2
    low, high = float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
    return Comparison(point, "paired bootstrap", not (low <= 0.0 <= high), None, low, high)


def within(value: float | None, bounds: tuple[float, float] | None) -> bool | None:
    """Whether a published number lies inside our interval (None when either is missing)."""
    if value is None or bounds is None:
        return None
    return bounds[0] <= float(value) <= bounds[1]
