"""How sure a table can be: intervals, paired tests, their multiplicity and the reproduction verdict, from the
runs' per-example predictions.

What an interval is *for* depends on the seeds a row has (the tables' captions say so):

- **One seed**: this trained model's score on a new test set of the same size (the examples are the sample).
  An accuracy-type cell: Wilson's score interval (statsmodels), closed form and never of zero width, even on a
  set that is all right. Avg over accuracy sets: Price & Bonett's (2004) adjusted Wald interval for a linear
  combination of independent proportions (the same idea: never zero width). A whole-set metric (GLUE's Matthews,
  Pearson, F1): a percentile bootstrap over the examples, the metric recomputed on each resample.
- **Several seeds**: the method's expected score *on this test set* over training seeds, the quantity a
  reproduction on the same benchmark is about: mean ± t_{S-1} · sd(per-seed scores) / √S. Avg: where one run
  per seed scores every set (commonsense), the per-seed Avg is the unit, so a good or bad seed moves every set
  together as it does in the runs; where each set is its own run (GLUE), each set's seed variance counts on its
  own, with Welch-Satterthwaite degrees of freedom. A t on the seeds, not a two-level bootstrap: the bootstrap
  shrinks the seed part of the variance by (S-1)/S and gives it normal quantiles where it has S-1 degrees of
  freedom (coverage 0.76 at S = 2; ../shared/research/statistics-audit-2026-12-03.md, 1d and 1f).
  Seeds whose scores are all equal leave the spread unestimated: such a row is judged as one seed (its first).

`compare` tests a method against the reference on the same examples: one seed each, McNemar's exact test on
one accuracy set (statsmodels), else a paired bootstrap (one example draw for both, p = twice the smaller tail
share beyond 0); several seeds, Welch's t on the per-seed scores (two methods' seeds are separate runs), and
where one side has one seed, its run is taken to vary as the other's seeds do. `holm` adjusts a row's per-set
p-values (statsmodels). `reproduction` judges ours against a published number (see its docstring).

The Satterthwaite degrees of freedom are written here: scipy's Welch test takes two raw samples, not a sum of
several sets' variance components.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000        # accuracy: vectorised means, cheap
METRIC_RESAMPLES = 1000  # a whole-set metric (GLUE's Matthews, Pearson): vectorised by its scorer, or per resample
SEED = 0                # the resampling is seeded: a table rebuilt from the same files shows the same intervals
CHUNK = 256             # resamples drawn at once (a (CHUNK, n) index array)

Headline = Callable[[list[dict]], float]  # prediction rows -> the set's headline number (x 100)
# prediction rows and a (resamples, n) index array -> the headline on each resample (None: not vectorised)
ResampledHeadline = Callable[[list[dict], np.ndarray], "np.ndarray | None"]


@dataclass
class SetRuns:
    """One test set's prediction rows of one table row: a list per seed, each in the test set's order, the
    headline computed from rows (`None`: the mean of `correct`, x 100), and the run id of each seed (the same id
    in several sets: one run scored them all); `resampled`, where the scorer has it, computes the headline on many
    resamples at once (the bootstrap's fast path; the same numbers as `headline` per resample)."""

    seeds: list[list[dict]]
    headline: Headline | None = None
    run_ids: list[str] | None = None
    resampled: ResampledHeadline | None = None

    @property
    def n(self) -> int:
        return len(self.seeds[0]) if self.seeds else 0

    @property
    def s(self) -> int:
        return len(self.seeds)

    def correct(self) -> np.ndarray:
        """(seeds x examples) 0 / 1, built once."""
        if getattr(self, "_correct", None) is None:
            self._correct = np.array([[float(r["correct"]) for r in rows] for rows in self.seeds], dtype=float)
        return self._correct

    def value(self, seed: int, index: np.ndarray) -> float:
        """The headline of seed `seed` on the examples `index` (a resample)."""
        if self.headline is None:
            return 100.0 * float(np.mean(self.correct()[seed, index]))
        rows = self.seeds[seed]
        return float(self.headline([rows[i] for i in index]))

    def values(self, seed: int, index: np.ndarray) -> np.ndarray:
        """The headline of seed `seed` on each resample of `index` ((resamples, n) example indices)."""
        if self.headline is None:
            return 100.0 * self.correct()[seed][index].mean(axis=1)
        found = self.resampled(self.seeds[seed], index) if self.resampled is not None else None
        if found is None:
            return np.array([self.value(seed, i) for i in index])
        return np.asarray(found, dtype=float)

    @property
    def binary(self) -> bool:
        """Right / wrong rows scored by their mean (a HumanEval row's `correct` is its pass@1, a fraction)."""
        if self.headline is not None:
            return False
        table = self.correct()
        return bool(np.all((table == 0) | (table == 1)))

    def per_seed(self) -> np.ndarray:
        """Each seed's headline on the whole set."""
        if self.headline is None:
            return 100.0 * self.correct().mean(axis=1)
        return np.array([float(self.headline(rows)) for rows in self.seeds])

    @classmethod
    def from_correct(cls, table: np.ndarray, run_ids: list[str] | None = None) -> "SetRuns":
        """A set's runs from a (seeds x examples) right / wrong table, its rows naming only their index (the
        simulations of harness.simulate)."""
        table = np.asarray(table, dtype=float)
        rows = [{"index": i} for i in range(table.shape[1])]
        runs = cls([rows] * table.shape[0], None, run_ids)
        runs._correct = table
        return runs

    def first_seed(self) -> "SetRuns":
        first = SetRuns(self.seeds[:1], self.headline, self.run_ids[:1] if self.run_ids else None, self.resampled)
        if getattr(self, "_correct", None) is not None:
            first._correct = self._correct[:1]
        return first


def _aligned(runs: Sequence[SetRuns]) -> bool:
    return all(r.seeds and len({len(rows) for rows in r.seeds}) == 1 and r.n for r in runs)


def _t(df: float, confidence: float = CONFIDENCE) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


# --- the seed part: a mean over seeds and its variance components ---------------------------------------------

@dataclass
class SeedMean:
    """A row's mean over seeds (of one set, or of Avg) and its variance from independent seed-variance estimates
    (`estimates`: (a single run's variance, weighted into the mean; its seeds S; its df S - 1)). The variance of
    the mean is Σ v / S; with `one_more_run` (a run drawn afresh, the reproduction's paper), Σ v (1/S + 1)."""

    mean: float
    estimates: list[tuple[float, int]]

    def components(self, one_more_run: bool = False) -> list[tuple[float, float]]:
        return [(v * (1.0 / s + (1.0 if one_more_run else 0.0)), s - 1) for v, s in self.estimates]

    def variance(self, one_more_run: bool = False) -> float:
        return sum(v for v, _ in self.components(one_more_run))

    def df(self, one_more_run: bool = False) -> float:
        return _satterthwaite(self.components(one_more_run))


def _satterthwaite(components: list[tuple[float, float]]) -> float:
    total = sum(v for v, _ in components)
    denominator = sum(v * v / df for v, df in components if v > 0)
    return total * total / denominator if denominator > 0 else float("inf")


def shares_runs(sets: Sequence[SetRuns]) -> bool:
    """The sets' k-th seeds are one run each (one run per seed scored every set), as their run ids say."""
    ids = [tuple(s.run_ids) if s.run_ids else None for s in sets]
    return all(i is not None for i in ids) and len(set(ids)) == 1


def seed_mean(sets: Sequence[SetRuns]) -> SeedMean | None:
    """The macro mean over `sets` of their seed means with its variance for this test set; None when a set has
    fewer than two seeds or the seeds' scores do not vary (nothing to estimate the spread from)."""
    if any(s.s < 2 for s in sets):
        return None
    k = len(sets)
    if shares_runs(sets):
        per_run = np.mean([s.per_seed() for s in sets], axis=0)  # each run's Avg
        estimates = [(float(np.var(per_run, ddof=1)), len(per_run))]
        mean = float(per_run.mean())
    else:  # each set its own runs: independent seed means
        scores = [s.per_seed() for s in sets]
        estimates = [(float(np.var(x, ddof=1)) / k**2, len(x)) for x in scores]
        mean = float(np.mean([x.mean() for x in scores]))
    if not sum(v for v, _ in estimates) > 0:
        return None
    return SeedMean(mean, estimates)


# --- intervals -------------------------------------------------------------------------------------------------

def interval(sets: Sequence[SetRuns]) -> tuple[float, float] | None:
    """The 95% interval of the macro mean over `sets` (one set: the cell itself); None without predictions,
    with a mix of one-seed and several-seed sets, or for a whole-set metric whose resamples never vary."""
    if not sets or not _aligned(sets):
        return None
    if all(s.s == 1 for s in sets):
        return _one_seed_interval(sets)
    if any(s.s == 1 for s in sets):
        return None
    seeds = seed_mean(sets)
    if seeds is None:  # the seeds agree: judged as one seed
        return _one_seed_interval([s.first_seed() for s in sets])
    half = _t(seeds.df()) * np.sqrt(seeds.variance())
    # (the t interval is not bounded by the scale: clipped to it, 0-100, or -100-100 for a correlation)
    floor = 0.0 if all(s.headline is None for s in sets) else -100.0
    return max(floor, seeds.mean - half), min(100.0, seeds.mean + half)


def _one_seed_interval(sets: Sequence[SetRuns]) -> tuple[float, float] | None:
    if all(s.binary for s in sets):
        counts = [(int(s.correct()[0].sum()), s.n) for s in sets]
        return wilson(*counts[0]) if len(sets) == 1 else price_bonett(counts)
    values = _bootstrap_values(sets, np.random.default_rng(SEED))
    if np.ptp(values) == 0:  # (every resample alike: a bootstrap cannot say how far the metric could move)
        return None
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def wilson(k: int, n: int) -> tuple[float, float]:
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(k, n, alpha=1 - CONFIDENCE, method="wilson")
    return 100.0 * float(low), 100.0 * float(high)


def price_bonett(counts: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """The macro mean of K independent proportions (k_j of n_j): each adjusted by 2/K successes in 4/K trials,
    then a Wald interval (Price & Bonett 2004, Psychological Methods 9(1); K = 1 is Agresti-Coull's plus four).
    Written here: statsmodels has it for one or two proportions, not for a mean of K."""
    from scipy.stats import norm

    k = len(counts)
    adjusted = [((c + 2.0 / k) / (n + 4.0 / k), n + 4.0 / k) for c, n in counts]
    mean = float(np.mean([p for p, _ in adjusted]))
    se = float(np.sqrt(sum(p * (1 - p) / m for p, m in adjusted)) / k)
    half = float(norm.ppf(0.5 + CONFIDENCE / 2)) * se
    return 100.0 * max(0.0, mean - half), 100.0 * min(1.0, mean + half)


def _index_chunks(rng, n: int, resamples: int):
    for start in range(0, resamples, CHUNK):
        yield rng.integers(0, n, (min(CHUNK, resamples - start), n))


def _draws_one_at_a_time(rng, n: int, resamples: int):
    """As `_index_chunks`, each resample drawn by its own call: the stream whole-set metrics were always
    resampled with (one draw per resample), so that their intervals stay what tables built before showed."""
    for start in range(0, resamples, CHUNK):
        yield np.stack([rng.integers(0, n, n) for _ in range(min(CHUNK, resamples - start))])


def _bootstrap_values(sets: Sequence[SetRuns], rng, reference: Sequence[SetRuns] | None = None) -> np.ndarray:
    """One seed's macro mean (minus the reference's, on the same example draw) over resamples of each set's
    examples; accuracy sets vectorised, whole-set metrics by their scorer's `resampled` where it has one (else
    recomputed per resample)."""
    cheap = all(s.headline is None for s in (*sets, *(reference or ())))
    resamples = RESAMPLES if cheap else METRIC_RESAMPLES
    total = np.zeros(resamples)
    for j, s in enumerate(sets):
        other = reference[j] if reference is not None else None
        if cheap:
            ours = s.correct()[0]
            theirs = other.correct()[0] if other is not None else None
            values = np.concatenate([100.0 * (ours[idx].mean(axis=1) - (theirs[idx].mean(axis=1) if theirs is not None else 0.0))
                                     for idx in _index_chunks(rng, s.n, resamples)])
        else:
            values = np.concatenate([s.values(0, idx) - (other.values(0, idx) if other is not None else 0.0)
                                     for idx in _draws_one_at_a_time(rng, s.n, resamples)])
        total += values
    return total / len(sets)


# --- comparisons -----------------------------------------------------------------------------------------------

@dataclass
class Comparison:
    """A method against the reference on the same examples: ours - reference, the test, its two-sided p-value,
    the difference's 95% interval where the test gives one, and whether p < 5% (unadjusted: `holm` adjusts)."""

    difference: float
    test: str
    significant: bool
    p_value: float | None = None
    low: float | None = None
    high: float | None = None


def compare(ours: Sequence[SetRuns], reference: Sequence[SetRuns]) -> Comparison | None:
    """`ours` against `reference`, set by set (the same sets in the same order; one set: a cell, several:
    Avg). None when the predictions are missing, the two were not scored on the same examples, or a side mixes
    one-seed and several-seed sets."""
    if not ours or len(ours) != len(reference) or not _aligned(ours) or not _aligned(reference):
        return None
    if any(a.n != b.n or not _same_examples(a, b) for a, b in zip(ours, reference)):
        return None
    if any(len({s.s == 1 for s in side}) > 1 for side in (ours, reference)):
        return None
    point = float(np.mean([s.per_seed().mean() for s in ours]) - np.mean([s.per_seed().mean() for s in reference]))
    a, b = seed_mean(ours), seed_mean(reference)
    if a is None and b is None:  # one seed each (or seeds that agree: their first)
        firsts = [s.first_seed() for s in ours], [s.first_seed() for s in reference]
        if len(ours) == 1 and ours[0].binary and reference[0].binary:
            return _mcnemar(firsts[0][0], firsts[1][0], point)
        return _paired_bootstrap(*firsts, point)
    return _seed_t(a, b, point)


def _seed_t(a: SeedMean | None, b: SeedMean | None, point: float) -> Comparison:
    """Welch's t on the two rows' seed means; a one-seed side is one run that varies as the other's do."""
    if a is None or b is None:
        components = (a or b).components(one_more_run=True)
        test = "t (one run; seed spread of the other row)"
    else:
        components, test = a.components() + b.components(), "Welch t over seeds"
    return _t_comparison(point, components, test)


def _t_comparison(point: float, components: list[tuple[float, float]], test: str) -> Comparison:
    from scipy.stats import t

    se, df = float(np.sqrt(sum(v for v, _ in components))), _satterthwaite(components)
    p = float(2 * t.sf(abs(point) / se, df)) if se > 0 else (1.0 if point == 0 else 0.0)
    half = _t(df) * se
    return Comparison(point, test, p < 1 - CONFIDENCE, p, point - half, point + half)


def _same_examples(a: SetRuns, b: SetRuns) -> bool:
    key = ("index", "answer", "label")
    first_a, first_b = a.seeds[0], b.seeds[0]
    return all(tuple(x.get(k) for k in key) == tuple(y.get(k) for k in key) for x, y in zip(first_a, first_b))


def _mcnemar(a: SetRuns, b: SetRuns, point: float) -> Comparison:
    from statsmodels.stats.contingency_tables import mcnemar

    x, y = a.correct()[0].astype(bool), b.correct()[0].astype(bool)
    table = [[int(np.sum(x & y)), int(np.sum(x & ~y))], [int(np.sum(~x & y)), int(np.sum(~x & ~y))]]
    if table[0][1] + table[1][0] == 0:  # the two agree on every example
        return Comparison(point, "McNemar", False, 1.0)
    p = float(mcnemar(table, exact=True).pvalue)
    return Comparison(point, "McNemar", p < 1 - CONFIDENCE, p)


def _paired_bootstrap(ours: Sequence[SetRuns], reference: Sequence[SetRuns], point: float) -> Comparison:
    """One seed each: both resampled with the same example indices; p is twice the smaller share of resampled
    differences on either side of 0 (with the +1 of a finite bootstrap)."""
    values = _bootstrap_values(ours, np.random.default_rng(SEED), reference)
    alpha = (1 - CONFIDENCE) / 2
    low, high = float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
    if np.ptp(values) == 0 and values[0] == 0:
        return Comparison(point, "paired bootstrap", False, 1.0, low, high)
    tail = min(np.sum(values <= 0), np.sum(values >= 0))
    p = float(min(1.0, 2 * (tail + 1) / (len(values) + 1)))
    return Comparison(point, "paired bootstrap", p < 1 - CONFIDENCE, p, low, high)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment over the p-values given (None: no test, left out of the family): the i-th
    smallest times (m - i + 1), made non-decreasing, capped at 1. Written here rather than called from
    statsmodels' `multipletests` (which the tests compare it with) because that runs a full `gc.collect()` on
    every call: ~80 ms in a process that holds a model, paid per table row and per simulated dataset."""
    present = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(present, key=lambda j: p_values[j])):
        running = max(running, min(1.0, (len(present) - rank) * float(p_values[i])))
        out[i] = running
    return out


# --- the reproduction verdict ----------------------------------------------------------------------------------

REPRODUCED, DIFFERS, INCONCLUSIVE, NOT_JUDGED = "reproduced", "differs", "inconclusive", "one seed: not judged"


@dataclass
class Verdict:
    """Ours against a published number: ours - paper, its 95% and 90% intervals, the verdict, the margin it was
    judged at and where the seed spread came from."""

    difference: float
    verdict: str
    margin: float
    spread: str
    low: float | None = None
    high: float | None = None
    low90: float | None = None
    high90: float | None = None


@dataclass
class PooledSpread:
    """A single run's variance pooled over a table's several-seed rows of one column, with its df."""

    variance: float
    df: float
    rows: int


def pooled_spread(rows: Sequence[Sequence[SetRuns]]) -> PooledSpread | None:
    """The seed variance of one run, pooled over rows (each a row's sets for one column) that have several seeds:
    Σ (S-1) s² / Σ (S-1)."""
    found = [f for f in (seed_mean(sets) for sets in rows) if f is not None]
    if not found:
        return None
    # a single run's variance (Σ of the estimates) and its df, per row
    parts = [(sum(v for v, _ in f.estimates), _satterthwaite([(v, s - 1) for v, s in f.estimates])) for f in found]
    df = sum(d for _, d in parts)
    return PooledSpread(sum(v * d for v, d in parts) / df, df, len(parts))


def reproduction(ours: Sequence[SetRuns], paper: float, margin: float,
                 pooled: PooledSpread | None = None) -> Verdict | None:
    """Is the published number what another run of ours would give on the same test set? The paper's number is
    taken as one more run: Δ = ours - paper ± t · √(s²/S + s²), s our single-run spread over seeds (the test
    examples are the paper's, so their noise cancels). Two one-sided tests against ±`margin`: **reproduced**
    when the 90% interval lies inside ±margin; else **differs** when the 95% interval excludes 0; else
    **inconclusive**. One seed (or seeds that agree): **not judged**, unless `pooled` gives the single-run
    spread of the table's several-seed rows, which is then used and named."""
    if not ours or not _aligned(ours) or len({s.s == 1 for s in ours}) > 1:
        return None
    mean = float(np.mean([s.per_seed().mean() for s in ours]))
    difference = mean - float(paper)
    seeds = seed_mean(ours)
    if seeds is not None:
        variance, df = seeds.variance(one_more_run=True), seeds.df(one_more_run=True)
        spread = f"our {ours[0].s} seeds"
    elif pooled is not None:
        variance, df = 2 * pooled.variance, pooled.df  # our one run and the paper's, each of the pooled spread
        spread = f"seed spread pooled over {pooled.rows} rows (df {pooled.df:.0f})"
    else:
        return Verdict(difference, NOT_JUDGED, margin, "one seed")
    se = float(np.sqrt(variance))
    low, high = difference - _t(df) * se, difference + _t(df) * se
    low90, high90 = difference - _t(df, 0.90) * se, difference + _t(df, 0.90) * se
    if -margin < low90 and high90 < margin:
        verdict = REPRODUCED
    elif low > 0 or high < 0:
        verdict = DIFFERS
    else:
        verdict = INCONCLUSIVE
    return Verdict(difference, verdict, margin, spread, low, high, low90, high90)
