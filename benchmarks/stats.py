"""Small statistics for reports: means with t-based 95% CIs, paired differences, verdicts.

A verdict is computed from numbers, never written in: ``holds`` when the CI of the effect lies on the
claimed side, ``does not hold`` when it lies on the other side (or, for equivalence claims, outside
the margin), ``inconclusive`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _st


@dataclass(frozen=True)
class Estimate:
    mean: float
    std: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.3f} (n={self.n})"
        return f"{self.mean:.3f} ± {self.std:.3f} [95% CI {self.low:.3f}, {self.high:.3f}] (n={self.n})"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean, sample std and a Student-t confidence interval of the mean."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, 0)
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, 0.0, -math.inf, math.inf, 1)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _st.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Estimate(mean, std, mean - half, mean + half, n)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """CI of mean(a - b) over paired values (same seeds / same tasks)."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs equal lengths, got {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b)])


def verdict_greater(effect: Estimate, margin: float = 0.0) -> str:
    """Claim: effect > margin."""
    if effect.n < 2:
        return "inconclusive"
    if effect.low > margin:
        return "holds"
    if effect.high < margin:
        return "does not hold"
    return "inconclusive"


def verdict_equivalent(effect: Estimate, margin: float) -> str:
    """Claim: |effect| <= margin (equivalence, TOST-style with the CI)."""
    if effect.n < 2:
        return "inconclusive"
    if -margin <= effect.low and effect.high <= margin:
        return "holds"
    if effect.low > margin or effect.high < -margin:
        return "does not hold"
    return "inconclusive"


def binomial_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson interval for a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    z = _st.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)
