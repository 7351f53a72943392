"""Simulated right / wrong tables with a known truth, to check harness.statistics' intervals, tests and verdicts
by their coverage (tests/test_statistics_coverage.py, experiments/statistics_coverage.py).

The model is the statistics audit's (../shared/research/statistics-audit-2026-12-03.md, appendix): a test set's
example difficulties θ_i ~ N(μ, 1.5) on the logit scale, fixed once per simulated benchmark; each training seed
shifts a run's logits by a_s ~ N(0, τ) (its seed effect, shared by every set that run scores); a run is right
on example i with probability expit(θ_i + a_s). The targets:
- `this_test_set`: the expected score on these examples over seeds, (1/n) Σ_i E_a expit(θ_i + a), by
  Gauss-Hermite quadrature (the estimand of several seeds' intervals);
- a single run's own expected score on new examples, E_θ expit(θ + a_s) (one seed's intervals): exact binomial
  coverage is used for those instead (`binomial_coverage`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.statistics import SetRuns

LOGIT_SD = 1.5
QUADRATURE = np.polynomial.hermite_e.hermegauss(40)  # nodes and weights for E over N(0, 1)


def expit(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Benchmark:
    """K test sets' example difficulties (logits), fixed across the runs of one simulated table."""

    logits: list[np.ndarray]

    @classmethod
    def draw(cls, rng, sizes: list[int], accuracies: list[float]) -> "Benchmark":
        return cls([rng.normal(_logit_mean(a), LOGIT_SD, n) for n, a in zip(sizes, accuracies)])

    def this_test_set(self, tau: float, shift: float = 0.0) -> list[float]:
        """Each set's expected score (x 100) over seeds on these examples."""
        nodes, weights = QUADRATURE
        weights = weights / weights.sum()
        return [100.0 * float(np.mean(expit(theta[:, None] + shift + tau * nodes[None, :]) @ weights))
                for theta in self.logits]

    def runs(self, rng, seeds: int, tau: float, shift: float = 0.0, shared: bool = True,
             name: str = "run") -> list[SetRuns]:
        """`seeds` runs of one method: with `shared`, run s scores every set with one seed effect (one run id
        per seed, as commonsense's runs); else each set has its own runs (GLUE)."""
        effects = rng.normal(0.0, tau, seeds)
        out = []
        for k, theta in enumerate(self.logits):
            if not shared:
                effects = rng.normal(0.0, tau, seeds)
            p = expit(theta[None, :] + shift + effects[:, None])
            table = rng.random(p.shape) < p
            ids = [f"{name}-{s}" if shared else f"{name}-{k}-{s}" for s in range(seeds)]
            out.append(SetRuns.from_correct(table, ids))
        return out


def _logit_mean(accuracy: float) -> float:
    """μ whose E_θ expit(θ) is `accuracy` at the logit spread (by bisection on the quadrature)."""
    nodes, weights = QUADRATURE
    weights = weights / weights.sum()
    low, high = -8.0, 8.0
    for _ in range(60):
        mid = (low + high) / 2
        if float(expit(mid + LOGIT_SD * nodes) @ weights) < accuracy:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def binomial_coverage(interval, n: int, p: float) -> float:
    """Exact coverage of a one-seed interval for k right of n (interval(k, n) -> (low, high) in %), summed over
    k with the Bin(n, p) weights."""
    from scipy.stats import binom

    ks = np.arange(n + 1)
    covered = np.array([low <= 100.0 * p <= high for low, high in (interval(int(k), n) for k in ks)])
    return float(binom.pmf(ks, n, p) @ covered)


def covers(bounds, truth: float) -> bool:
    return bounds is not None and bounds[0] <= truth <= bounds[1]
