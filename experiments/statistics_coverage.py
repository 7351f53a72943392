"""The coverage table of harness.statistics: each interval, test and verdict on thousands of simulated datasets
(harness.simulate, the statistics audit's model: logit difficulties N(μ, 1.5), a seed effect N(0, τ) per run),
printed as markdown. tests/test_statistics_coverage.py checks the same regimes on a few hundred datasets.

    .venv/bin/python experiments/statistics_coverage.py                  # 2,000 datasets a row (~3 minutes here)
    .venv/bin/python experiments/statistics_coverage.py --datasets 500   # quicker

Columns: the regime, what is measured, the rate, its Monte Carlo standard error and the nominal rate. τ = 0.3 is
a seed spread of about 4 points on one set of 1,000 (the audit's "seeds disagree" case), τ = 0.15 about 2.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from harness.simulate import Benchmark, binomial_coverage, covers
from harness.statistics import DIFFERS, REPRODUCED, compare, holm, interval, reproduction, wilson

ACCURACIES = [0.6, 0.7, 0.8, 0.9, 0.65, 0.75, 0.85, 0.5]


def interval_coverage(rng, datasets, seeds, tau, sizes, shared=True) -> float:
    hits = 0
    for _ in range(datasets):
        bench = Benchmark.draw(rng, sizes, ACCURACIES[:len(sizes)] if len(sizes) > 1 else [0.7])
        hits += covers(interval(bench.runs(rng, seeds, tau, shared=shared)), float(np.mean(bench.this_test_set(tau))))
    return hits / datasets


def null_star_rate(rng, datasets, seeds, tau, sizes) -> float:
    starred = 0
    for _ in range(datasets):
        bench = Benchmark.draw(rng, sizes, ACCURACIES[:len(sizes)] if len(sizes) > 1 else [0.7])
        starred += compare(bench.runs(rng, seeds, tau, name="a"), bench.runs(rng, seeds, tau, name="b")).significant
    return starred / datasets


def familywise(rng, datasets, sets=8, n=400) -> tuple[float, float]:
    """(rows with any unadjusted *, rows with any Holm-adjusted *): one seed each, no difference anywhere."""
    raw = adjusted = 0
    for _ in range(datasets):
        bench = Benchmark.draw(rng, [n] * sets, ACCURACIES[:sets])
        a, b = bench.runs(rng, 1, 0.0, name="a"), bench.runs(rng, 1, 0.0, name="b")
        p = [compare([x], [y]).p_value for x, y in zip(a, b)]
        raw += any(q < 0.05 for q in p)
        adjusted += any(q < 0.05 for q in holm(p))
    return raw / datasets, adjusted / datasets


def verdicts(rng, datasets, seeds, tau, n, gap) -> dict[str, float]:
    said = []
    for _ in range(datasets):
        bench = Benchmark.draw(rng, [n], [0.7])
        ours, paper = bench.runs(rng, seeds, tau), bench.runs(rng, 1, tau, name="paper")
        said.append(reproduction(ours, float(paper[0].per_seed()[0]) + gap, 2.0).verdict)
    return {v: float(np.mean([s == v for s in said])) for v in (REPRODUCED, DIFFERS)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=2000, help="simulated datasets per row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng, d = np.random.default_rng(args.seed), args.datasets
    start = time.perf_counter()
    rows: list[tuple[str, str, float, float, float]] = []

    def add(regime: str, what: str, rate: float, nominal: float, count: int = d) -> None:
        rows.append((regime, what, rate, nominal, np.sqrt(max(rate * (1 - rate), 1e-9) / count)))
        expected = "-" if np.isnan(nominal) else f"{nominal:.2f}"
        print(f"| {regime} | {what} | {rate:.3f} | ±{rows[-1][4]:.3f} | {expected} |", flush=True)
    print("| regime | measured | rate | MC se | nominal |\n|---|---|---|---|---|")
    for p in (0.5, 0.85, 0.95, 0.98):
        rows.append(("", "", binomial_coverage(wilson, 40, p), 0.95, 0.0))
        print(f"| one seed, n = 40, p = {p} | Wilson coverage (exact) | {rows[-1][2]:.3f} | exact | 0.95 |", flush=True)
    for seeds in (2, 3, 5):
        for tau in (0.0, 0.15, 0.3):
            add(f"{seeds} seeds, n = 1000, τ = {tau}", "coverage of this test set's score",
                interval_coverage(rng, d, seeds, tau, [1000]), 0.95)
    for tau in (0.0, 0.15, 0.3):
        add(f"Avg of 8 sets of 200, 3 seeds, τ = {tau}, one run per seed", "coverage",
            interval_coverage(rng, d // 2, 3, tau, [200] * 8), 0.95, d // 2)
    add("Avg of 8 sets of 200, 3 seeds, τ = 0.3, a run per set (GLUE)", "coverage",
        interval_coverage(rng, d // 2, 3, 0.3, [200] * 8, shared=False), 0.95, d // 2)
    for seeds, tau in ((3, 0.0), (3, 0.2), (5, 0.3)):
        add(f"Δ, no difference, {seeds} seeds each, n = 1000, τ = {tau}", "share starred",
            null_star_rate(rng, d, seeds, tau, [1000]), 0.05)
    add("Avg Δ, no difference, 4 sets of 200, 3 seeds, τ = 0.3", "share starred",
        null_star_rate(rng, d // 2, 3, 0.3, [200] * 4), 0.05, d // 2)
    raw, adjusted = familywise(rng, d // 2)
    add("a row of 8 sets of 400, one seed, no difference", "rows with a * (unadjusted)", raw, 0.05, d // 2)
    add("a row of 8 sets of 400, one seed, no difference", "rows with a * (Holm within the row)", adjusted, 0.05, d // 2)
    for seeds, tau, n in ((3, 0.15, 1000), (5, 0.15, 1000), (5, 0.0, 3000)):
        perfect, gap = verdicts(rng, d // 2, seeds, tau, n, 0.0), verdicts(rng, d // 2, seeds, tau, n, 3.0)
        regime = f"paper = one more run, {seeds} seeds, n = {n}, τ = {tau}, margin ±2"
        add(regime, "perfect reproduction called 'differs'", perfect[DIFFERS], 0.05, d // 2)
        add(regime, "perfect reproduction called 'reproduced' (power)", perfect[REPRODUCED], float("nan"), d // 2)
        add(regime, "3-point gap called 'reproduced'", gap[REPRODUCED], 0.05, d // 2)
    print(f"\n{d} datasets a row (half for the Avg, family and verdict rows); {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
