"""Statistics with known answers."""

from __future__ import annotations

import math
import random

import pytest

from mathtune.analysis.stats import (
    Trend,
    agreement,
    majority_vote,
    mcnemar_exact,
    paired_counts,
    pass_at_k,
    percent_decrease,
    trend,
    wilson_interval,
)


def _wilson_formula(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857-872, Table II, method 3 (Wilson score).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_published(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_matches_formula() -> None:
    lo, hi = wilson_interval(8, 10)
    flo, fhi = _wilson_formula(8, 10, 1.959963984540054)
    assert (lo, hi) == (pytest.approx(flo, abs=1e-12), pytest.approx(fhi, abs=1e-12))
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    # Higher confidence, wider interval.
    lo99, hi99 = wilson_interval(8, 10, confidence=0.99)
    assert lo99 < lo and hi99 > hi


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 10)[0] == 0.0
    for bad in ((5, 3), (-1, 3), (1, -1)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, confidence=1.0)


def test_mcnemar_exact_known() -> None:
    # Two-sided binomial on 7 discordant pairs: 2 * P(X <= 1) = 2 * 8 / 128.
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_mcnemar_matches_statsmodels() -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    for b, c in ((3, 11), (20, 9), (0, 4)):
        ref = mcnemar([[50, b], [c, 40]], exact=True).pvalue
        assert mcnemar_exact(b, c) == pytest.approx(ref)


def test_paired_counts() -> None:
    base = [True, True, False, False, False]
    tuned = [True, False, True, False, True]
    assert paired_counts(base, tuned) == {"both_right": 1, "fixed": 2, "broken": 1, "both_wrong": 1}
    assert paired_counts([], []) == {"both_right": 0, "fixed": 0, "broken": 0, "both_wrong": 0}
    with pytest.raises(ValueError):
        paired_counts([True], [True, False])


def test_percent_decrease() -> None:
    assert percent_decrease(2.0, 1.5) == pytest.approx(25.0)
    assert percent_decrease(1.0, 1.2) == pytest.approx(-20.0)
    assert math.isnan(percent_decrease(0.0, 1.0))


def test_trend_known_slope() -> None:
    rng = random.Random(0)
    xs = list(range(0, 200, 10))
    ys = [3.0 - 0.01 * x + rng.gauss(0, 0.02) for x in xs]
    t = trend(xs, ys)
    assert t.ci_low < -0.01 < t.ci_high
    assert t.slope == pytest.approx(-0.01, abs=1e-3)
    assert t.intercept == pytest.approx(3.0, abs=0.05)
    assert t.n == 20 and t.p_value < 1e-6
    assert t.improving is True and t.verdict == "still decreasing"


def test_trend_matches_scipy() -> None:
    from scipy.stats import linregress
    from scipy.stats import t as t_dist

    xs = [0, 1, 2, 3, 4, 5]
    ys = [2.0, 1.7, 1.9, 1.4, 1.5, 1.2]
    ref = linregress(xs, ys)
    half = t_dist.ppf(0.975, df=4) * ref.stderr
    got = trend(xs, ys)
    assert got.slope == pytest.approx(ref.slope)
    assert got.intercept == pytest.approx(ref.intercept)
    assert got.p_value == pytest.approx(ref.pvalue)
    assert (got.ci_low, got.ci_high) == (pytest.approx(ref.slope - half), pytest.approx(ref.slope + half))


def test_trend_verdicts() -> None:
    flat = trend([0, 1, 2, 3], [1.0, 2.0, 1.0, 2.0])
    assert flat.improving is None and flat.verdict == "flat (no significant trend)"
    constant = trend([0, 1, 2, 3], [1.0, 1.0, 1.0, 1.0])
    assert constant.verdict == "flat (no significant trend)"
    rising = trend([0, 1, 2, 3, 4], [1.0, 1.1, 1.3, 1.35, 1.5])
    assert rising.improving is False and rising.verdict == "increasing"
    two = trend([0, 1], [2.0, 1.0])
    assert two.verdict == "too few points" and two.improving is None and two.slope == -1.0
    assert trend([], []).verdict == "too few points"
    assert trend([1, 1, 1], [1, 2, 3]).verdict == "too few points"  # all xs equal
    # A NaN loss is dropped, not propagated.
    with_nan = trend([0, 1, 2, 3, 4], [3.0, 2.0, math.nan, 0.0, -1.0])
    assert with_nan.n == 4 and with_nan.verdict == "still decreasing"
    with pytest.raises(ValueError):
        trend([0, 1], [1.0])
    assert isinstance(flat, Trend)


def test_majority_vote() -> None:
    assert majority_vote(["7", "18", "18.0", "7"]) == "7"  # tie goes to the first seen
    assert majority_vote(["$18", "18.00", None, "7", "7"]) == "$18"  # '$18' and '18.00' are one vote
    assert majority_vote([None, "5", None]) == "5"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    assert majority_vote(["abc", " abc", "3"]) == "abc"


def test_agreement_and_pass_at_k() -> None:
    assert agreement(["7", "7", None, "8"]) == 0.5
    assert agreement([None]) == 0.0
    assert math.isnan(agreement([]))
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
