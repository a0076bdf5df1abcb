"""The statistics behind every verdict: one module, used by all four studies.

Rules (a reviewer's, not ours to tune):
- The unit of replication is the independent training run, the seed. Measurements that share a seed
  (layers, tasks, fractions, sources) are averaged within the seed first (``seed_means``); the tests
  below then see one number per seed, and report that n.
- "A > B" claims: one-sided one-sample t-test of the per-seed effects against the claim's margin.
  ``holds`` when significant at alpha; ``does not hold`` when the opposite one-sided test is; else
  ``inconclusive`` with the minimum detectable effect at this n and the n that would decide.
- "No difference" claims: two one-sided tests (TOST) against a margin that the study's protocol
  defines with its reason. ``does not hold`` when the effect lies significantly outside the margin.
- "For every X" claims: one test per X, Holm-corrected (``all_greater``); or, when the claim is
  about a direction across X, a trend test on the per-seed slopes (``trend``).
The tests come from scipy and statsmodels; tests/benchmarks/core/test_stats.py checks them against
textbook values.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

ALPHA = 0.05
POWER = 0.8
VERDICTS = ("holds", "does not hold", "inconclusive")


@dataclass(frozen=True)
class Estimate:
    """Mean, sample std and a two-sided Student-t confidence interval of the mean."""

    mean: float
    std: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.3f} (n={self.n})"
        return f"{self.mean:.3f} ± {self.std:.3f} [95% CI {self.low:.3f}, {self.high:.3f}] (n={self.n})"

    def interval(self) -> str:
        """``+0.061 [+0.028, +0.095]``: an effect with its 95% CI, for tables."""
        if self.n == 0:
            return "n/a"
        if self.n < 2:
            return f"{self.mean:+.3f} (one seed, no CI)"
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


@dataclass(frozen=True)
class Outcome:
    """The outcome of one statistical test of a claim: what a findings table and findings.json show."""

    test: str
    estimate: Estimate
    p: float
    verdict: str
    mde: float | None = None  # smallest effect this n detects with 80% power (one-sided, alpha 0.05)
    n_needed: int | None = None  # seeds needed to decide the observed effect with 80% power
    note: str = ""

    @property
    def effect(self) -> float:
        return self.estimate.mean

    @property
    def n(self) -> int:
        return self.estimate.n

    def power_text(self) -> str:
        return power_text(self.verdict, self.n, self.mde, self.n_needed)


def power_text(verdict: str, n: int, mde: float | None, n_needed: int | None) -> str:
    """What n would decide an inconclusive verdict (empty for decided ones)."""
    if verdict != "inconclusive":
        return ""
    parts = []
    if mde is not None and math.isfinite(mde):
        parts.append(f"MDE {mde:.3g} at n={n}")
    if n_needed is not None:
        parts.append(f"n≈{n_needed} for the observed effect")
    if n < 2:
        parts.append("needs at least 2 seeds")
    return "; ".join(parts) or "add seeds"


def _clean(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> Estimate:
    """Mean, sample std and a Student-t confidence interval of the mean (scipy's t distribution)."""
    data = np.asarray(_clean(values), dtype=np.float64)
    n = data.size
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(data.mean())
    if n == 1:
        return Estimate(mean, 0.0, -math.inf, math.inf, 1)
    std = float(data.std(ddof=1))
    if std == 0.0:
        return Estimate(mean, 0.0, mean, mean, n)
    low, high = st.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return Estimate(mean, std, float(low), float(high), n)


def seed_means(pairs: Iterable[tuple[Hashable, float]]) -> dict[Hashable, float]:
    """(seed, value) pairs -> {seed: mean of its values}: the one number per independent run."""
    groups: dict[Hashable, list[float]] = defaultdict(list)
    for seed, value in pairs:
        if value is not None and not math.isnan(float(value)):
            groups[seed].append(float(value))
    return {seed: float(np.mean(values)) for seed, values in sorted(groups.items(), key=lambda kv: str(kv[0]))}


def paired(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> list[float]:
    """a[seed] - b[seed] over the seeds both have (the within-seed pairing of two arms)."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b), key=str)]


def mde(std: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean effect a one-sided one-sample t-test at this n detects with this power."""
    from statsmodels.stats.power import TTestPower

    if n < 2 or not math.isfinite(std):
        return math.inf
    if std == 0.0:
        return 0.0
    size = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="larger")
    return float(size) * std


def n_needed(effect: float, std: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Seeds a one-sided one-sample t-test needs to detect ``effect`` with this power (None: undefined)."""
    from statsmodels.stats.power import TTestPower

    if not (math.isfinite(effect) and math.isfinite(std)) or std <= 0 or effect == 0:
        return None
    size = abs(effect) / std
    try:
        n = TTestPower().solve_power(effect_size=size, nobs=None, alpha=alpha, power=power, alternative="larger")
    except (ValueError, RuntimeError):
        return None
    return int(math.ceil(float(np.atleast_1d(n)[0]))) if np.isfinite(n).all() else None


def _one_sided_p(data: np.ndarray, margin: float, alternative: str) -> float:
    if data.size < 2:
        return math.nan
    if np.all(data == data[0]):  # no spread: the sign of the difference is certain
        if alternative == "greater":
            return 0.0 if data[0] > margin else 1.0
        return 0.0 if data[0] < margin else 1.0
    return float(st.ttest_1samp(data, margin, alternative=alternative).pvalue)


def _undecided(estimate: Estimate, margin: float) -> tuple[float | None, int | None]:
    if estimate.n < 2:
        return None, None
    return mde(estimate.std, estimate.n), n_needed(estimate.mean - margin, estimate.std)


def greater(effects: Sequence[float], margin: float = 0.0, alpha: float = ALPHA) -> Outcome:
    """Claim: the mean per-seed effect exceeds ``margin`` (one-sided one-sample t-test)."""
    estimate = mean_ci(effects)
    data = np.asarray(_clean(effects))
    name = f"one-sided t-test, effect > {margin:g}"
    if estimate.n < 2:
        return Outcome(name, estimate, math.nan, "inconclusive", note="fewer than 2 seeds")
    p = _one_sided_p(data, margin, "greater")
    if p < alpha:
        return Outcome(name, estimate, p, "holds")
    if _one_sided_p(data, margin, "less") < alpha:
        return Outcome(name, estimate, p, "does not hold")
    return Outcome(name, estimate, p, "inconclusive", *_undecided(estimate, margin))


def less(effects: Sequence[float], margin: float = 0.0, alpha: float = ALPHA) -> Outcome:
    """Claim: the mean per-seed effect is below ``margin`` (the mirror of greater)."""
    flipped = greater([-v for v in _clean(effects)], -margin, alpha)
    estimate = mean_ci(effects)
    return Outcome(f"one-sided t-test, effect < {margin:g}", estimate, flipped.p, flipped.verdict,
                   flipped.mde, flipped.n_needed, flipped.note)


def equivalent(effects: Sequence[float], margin: float, alpha: float = ALPHA) -> Outcome:
    """Claim: |mean per-seed effect| < margin: two one-sided tests (statsmodels' TOST).

    ``does not hold`` when the effect is significantly outside the margin on either side.
    """
    from statsmodels.stats.weightstats import DescrStatsW

    if margin <= 0:
        raise ValueError(f"an equivalence margin must be positive, got {margin}")
    estimate = mean_ci(effects)
    data = np.asarray(_clean(effects))
    name = f"TOST equivalence, margin ±{margin:g}"
    if estimate.n < 2:
        return Outcome(name, estimate, math.nan, "inconclusive", note="fewer than 2 seeds")
    if estimate.std == 0.0:
        inside = abs(estimate.mean) < margin
        return Outcome(name, estimate, 0.0 if inside else 1.0, "holds" if inside else "does not hold")
    p = float(DescrStatsW(data).ttost_mean(-margin, margin)[0])
    if p < alpha:
        return Outcome(name, estimate, p, "holds")
    if _one_sided_p(data, margin, "greater") < alpha or _one_sided_p(data, -margin, "less") < alpha:
        return Outcome(name, estimate, p, "does not hold")
    distance = margin - abs(estimate.mean)
    needed = n_needed(distance, estimate.std) if distance > 0 else None
    return Outcome(name, estimate, p, "inconclusive", mde(estimate.std, estimate.n), needed,
                      note=f"equivalence needs the 90% CI inside ±{margin:g}")


def all_greater(effects: Mapping[str, Sequence[float]], margin: float = 0.0,
                     alpha: float = ALPHA) -> Outcome:
    """Claim: for every X the mean per-seed effect exceeds margin: one test per X, Holm-corrected.

    ``holds`` when every Holm-adjusted p is below alpha; ``does not hold`` when any X is significantly
    below the margin (Holm over the opposite tests); the estimate shown is the X with the smallest mean.
    """
    labels = list(effects)
    name = f"Holm over {len(labels)} one-sided t-tests, effect > {margin:g} for every X"
    results = {label: greater(effects[label], margin, alpha) for label in labels}
    if not labels or any(r.n < 2 for r in results.values()):
        worst = min(results.values(), key=lambda r: r.n, default=None)
        estimate = worst.estimate if worst else mean_ci([])
        return Outcome(name, estimate, math.nan, "inconclusive", note="fewer than 2 seeds for some X")
    smallest = min(labels, key=lambda k: results[k].effect)
    greater_p = [results[k].p for k in labels]
    less_p = [_one_sided_p(np.asarray(_clean(effects[k])), margin, "less") for k in labels]
    adjusted, against = holm(greater_p), holm(less_p)
    worst_p = float(max(adjusted))
    note = f"smallest at {smallest}; Holm-adjusted p per X: " + ", ".join(
        f"{k} {p:.3g}" for k, p in zip(labels, adjusted))
    estimate = results[smallest].estimate
    if all(p < alpha for p in adjusted):
        return Outcome(name, estimate, worst_p, "holds", note=note)
    if any(p < alpha for p in against):
        return Outcome(name, estimate, worst_p, "does not hold", note=note)
    return Outcome(name, estimate, worst_p, "inconclusive", *_undecided(estimate, margin), note=note)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: the k-th smallest times (m - k + 1), made monotone.

    Equal to statsmodels' ``multipletests(method="holm")`` (the test checks it), written out because
    that call runs a full ``gc.collect()`` each time (~0.5 s with a torch process's heap).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, np.maximum.accumulate(p[order] * (p.size - np.arange(p.size))))
    adjusted = np.empty_like(p)
    adjusted[order] = scaled
    return [float(v) for v in adjusted]


def seed_slopes(points: Mapping[Hashable, Sequence[tuple[float, float]]]) -> dict[Hashable, float]:
    """{seed: [(x, y), ...]} -> {seed: least-squares slope of y on x} (scipy's linregress)."""
    slopes = {}
    for seed, pts in points.items():
        xs = [x for x, y in pts if y is not None and not math.isnan(y)]
        ys = [y for x, y in pts if y is not None and not math.isnan(y)]
        if len(set(xs)) >= 2:
            slopes[seed] = float(st.linregress(xs, ys).slope)
    return slopes


def trend(points: Mapping[Hashable, Sequence[tuple[float, float]]], direction: str,
               alpha: float = ALPHA) -> Outcome:
    """Claim: y rises (``increasing``) or falls (``decreasing``) with x: a t-test on the per-seed slopes."""
    if direction not in ("increasing", "decreasing"):
        raise ValueError(f"direction must be 'increasing' or 'decreasing', got {direction!r}")
    slopes = list(seed_slopes(points).values())
    base = greater(slopes) if direction == "increasing" else less(slopes)
    return Outcome(f"trend: one-sided t-test on per-seed slopes ({direction})", base.estimate, base.p,
                   base.verdict, base.mde, base.n_needed, base.note)

