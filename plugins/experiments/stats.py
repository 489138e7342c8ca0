"""The statistics of the experiments report: intervals, tests and sample sizes, from the
standard library alone (``statistics.NormalDist``).

* A proportion (success, validation pass rate) gets the Wilson score interval, which stays inside
  [0, 1] and behaves at 0/n and n/n, where the normal (Wald) interval does not.
* A mean (cost, latency, feedback score) gets the normal-approximation interval, mean +- z * s /
  sqrt(n) with the sample standard deviation: fine from a few dozen values; below that it is too
  narrow (Student's t would be wider), which is one reason the report wants a minimum n per arm
  before it names a winner.
* Two proportions are compared with the pooled two-proportion z-test, two means with Welch's
  z-test (unequal variances, large-sample), both two-sided.
* The sample size per arm to tell two arms apart is the usual normal-approximation power
  formula, at the test's significance level and 80% power, for the difference seen so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

STANDARD = NormalDist()


def z_for(confidence: float) -> float:
    """The two-sided critical value: 1.96 for 0.95."""
    return STANDARD.inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``successes / n``; None when ``n`` is 0."""
    if n <= 0:
        return None
    z = z_for(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class Sample:
    """Values summarised: how many, their mean and their sample variance (n - 1)."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, values: list[float]) -> "Sample":
        n = len(values)
        if n == 0:
            return cls(0, math.nan, math.nan)
        mean = math.fsum(values) / n
        variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        return cls(n, mean, variance)

    def interval(self, confidence: float = 0.95) -> tuple[float, float] | None:
        """The normal-approximation interval of the mean; None with fewer than two values."""
        if self.n < 2:
            return None
        half = z_for(confidence) * math.sqrt(self.variance / self.n)
        return self.mean - half, self.mean + half


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float:
    """The two-sided p-value of the pooled two-proportion z-test of ``x1/n1`` against
    ``x2/n2``; 1.0 when either is empty or nothing varies."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (x1 / n1 - x2 / n2) / se
    return 2 * (1 - STANDARD.cdf(abs(z)))


def welch_p(a: Sample, b: Sample) -> float:
    """The two-sided p-value of Welch's z-test of two means; 1.0 with fewer than two values in
    either, 0.0 when neither varies but the means differ."""
    if a.n < 2 or b.n < 2:
        return 1.0
    se = math.sqrt(a.variance / a.n + b.variance / b.n)
    if se == 0:
        return 1.0 if a.mean == b.mean else 0.0
    return 2 * (1 - STANDARD.cdf(abs(a.mean - b.mean) / se))


def n_for_proportions(p1: float, p2: float, alpha: float = 0.05,
                      power: float = 0.8) -> int | None:
    """Requests per arm for a two-sided test at ``alpha`` to tell ``p1`` from ``p2`` with
    ``power``; None when they are equal (no sample size separates them)."""
    if p1 == p2:
        return None
    z_a, z_b = STANDARD.inv_cdf(1 - alpha / 2), STANDARD.inv_cdf(power)
    mean = (p1 + p2) / 2
    top = z_a * math.sqrt(2 * mean * (1 - mean)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil((top / (p1 - p2)) ** 2)


def n_for_means(a: Sample, b: Sample, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Values per arm for a two-sided test at ``alpha`` to tell the two means apart with
    ``power``, at the variances seen; None when the means are equal."""
    difference = a.mean - b.mean
    if not difference or math.isnan(difference):
        return None
    z_a, z_b = STANDARD.inv_cdf(1 - alpha / 2), STANDARD.inv_cdf(power)
    return max(2, math.ceil((z_a + z_b) ** 2 * (a.variance + b.variance) / difference ** 2))
