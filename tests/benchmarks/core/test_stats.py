"""The statistics module against textbook values, and the verdict rules every finding uses.

Reference data: Student's sleep data (Cushny & Peebles 1905, R's ``sleep``): the paired extra hours of
sleep, drug 2 minus drug 1, for 10 patients. R: t.test(d) gives t = 4.0621, df = 9, p = 0.002833,
95% CI [0.7001142, 2.4598858], mean 1.58.
"""

from __future__ import annotations

import math

import pytest
from scipy import stats as st

from benchmarks.core import stats

SLEEP = [1.2, 2.4, 1.3, 1.3, 0.0, 1.0, 1.8, 0.8, 4.6, 1.4]


def test_mean_ci_is_students_t_interval_of_the_sleep_data():
    e = stats.mean_ci(SLEEP)
    assert e.n == 10 and e.mean == pytest.approx(1.58)
    assert (e.low, e.high) == pytest.approx((0.7001142, 2.4598858), abs=1e-7)


def test_one_sided_t_test_p_is_half_the_two_sided_textbook_p():
    outcome = stats.greater(SLEEP)
    assert outcome.p == pytest.approx(0.002833 / 2, rel=1e-3)
    assert outcome.verdict == "holds" and outcome.n == 10


def test_greater_does_not_hold_when_the_effect_is_significantly_the_other_way():
    assert stats.greater([-v for v in SLEEP]).verdict == "does not hold"
    assert stats.less([-v for v in SLEEP]).verdict == "holds"


def test_greater_is_inconclusive_with_the_mde_and_the_n_needed():
    outcome = stats.greater([0.3, -0.2, 0.25])
    assert outcome.verdict == "inconclusive"
    assert outcome.mde is not None and outcome.mde > abs(outcome.effect)
    assert outcome.n_needed is not None and outcome.n_needed > 3
    assert "MDE" in outcome.power_text() and "at n=3" in outcome.power_text()


def test_one_seed_is_always_inconclusive():
    assert stats.greater([0.9]).verdict == "inconclusive"
    assert stats.equivalent([0.0], margin=0.1).verdict == "inconclusive"


def test_n_needed_for_half_a_standard_deviation_is_27_as_in_gpower():
    """G*Power, one-sample t-test, one-tailed, alpha 0.05, power 0.80, d = 0.5: n = 27."""
    assert stats.n_needed(0.5, 1.0) == 27
    assert stats.mde(1.0, 27) <= 0.5 <= stats.mde(1.0, 26)


def test_tost_p_is_the_larger_of_the_two_one_sided_p_values():
    margin = 2.5
    e = stats.mean_ci(SLEEP)
    se = e.std / math.sqrt(10)
    expected = max(st.t.sf((e.mean + margin) / se, 9), st.t.cdf((e.mean - margin) / se, 9))
    outcome = stats.equivalent(SLEEP, margin)
    assert outcome.p == pytest.approx(expected, rel=1e-9)
    assert outcome.verdict == "holds" and "TOST" in outcome.test


def test_equivalence_fails_outside_the_margin_and_is_undecided_in_between():
    assert stats.equivalent(SLEEP, margin=0.2).verdict == "does not hold"
    undecided = stats.equivalent([0.1, -0.3, 0.4], margin=0.3)
    assert undecided.verdict == "inconclusive" and undecided.mde is not None
    with pytest.raises(ValueError, match="positive"):
        stats.equivalent(SLEEP, margin=0)


def test_holm_adjusts_as_in_the_textbook_example_and_as_statsmodels_does():
    """Holm (1979) step-down: sorted p times (m, m-1, ...), made monotone."""
    from statsmodels.stats.multitest import multipletests

    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    for p in ([0.2, 0.2, 0.01], [0.5, 0.001, 0.04, 0.04, 0.9], [0.3]):
        assert stats.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))


def test_for_every_x_needs_every_holm_adjusted_test():
    strong = {"b=1": SLEEP, "b=4": [v + 0.5 for v in SLEEP]}
    assert stats.all_greater(strong).verdict == "holds"
    one_fails = {**strong, "b=8": [-v for v in SLEEP]}
    result = stats.all_greater(one_fails)
    assert result.verdict == "does not hold" and "smallest at b=8" in result.note
    weak = {**strong, "b=8": [0.1, -0.1, 0.2]}
    assert stats.all_greater(weak).verdict == "inconclusive"


def test_trend_tests_the_per_seed_slopes():
    rising = {seed: [(x, 0.1 * x + 0.01 * seed) for x in (1, 2, 4, 8)] for seed in range(4)}
    assert stats.seed_slopes(rising) == pytest.approx({s: 0.1 for s in range(4)})
    assert stats.trend(rising, "increasing").verdict == "holds"
    assert stats.trend(rising, "decreasing").verdict == "does not hold"
    with pytest.raises(ValueError, match="direction"):
        stats.trend(rising, "upwards")


def test_seed_means_average_within_a_seed_before_any_test():
    pairs = [(0, 1.0), (0, 3.0), (1, 5.0), (1, float("nan")), (2, 4.0)]
    assert stats.seed_means(pairs) == {0: 2.0, 1: 5.0, 2: 4.0}
    assert stats.paired({0: 2.0, 1: 5.0, 2: 4.0}, {0: 1.0, 2: 1.0, 3: 9.0}) == [1.0, 3.0]
