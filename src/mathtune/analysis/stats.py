"""Statistics for the report (OWNED BY: helper 'pure'; contract fixed).

Contract:
    wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]
    mcnemar_exact(b: int, c: int) -> float          # two-sided exact p-value on discordant counts
    percent_decrease(start: float, end: float) -> float   # 100 * (start - end) / start
    trend(xs, ys, confidence=0.95) -> Trend          # OLS slope with CI
        Trend(slope, intercept, ci_low, ci_high, n, p_value, improving: bool | None), .verdict

Extra:
    paired_counts(base, tuned) -> dict               # both_right / fixed / broken / both_wrong
    majority_vote(answers) -> str | None             # numeric-aware, ties to the first seen
    agreement(answers) -> float                      # share of samples that agree with the vote
    pass_at_k(n, c, k) -> float                      # unbiased pass@k (Chen et al., 2021)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _st
from statsmodels.stats.proportion import proportion_confint

from mathtune.data.extraction import normalize_number


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials.

    n = 0 gives (0.0, 1.0): with no observations every rate is possible, and a finite pair keeps
    reports and JSON free of NaN.
    """
    _check_confidence(confidence)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    low, high = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    # At k = 0 / k = n the Wilson bound is exactly 0 / 1; float noise would print 0.9999999999999999.
    low = 0.0 if k == 0 else max(0.0, float(low))
    high = 1.0 if k == n else min(1.0, float(high))
    return (low, high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of b against b + c at p = 1/2.

    b, c are the discordant counts (e.g. fixed and broken items); b = c = 0 gives 1.0.
    """
    if b < 0 or c < 0:
        raise ValueError(f"counts must be non-negative, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(min(1.0, _st.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue))


def paired_counts(base: Sequence[bool], tuned: Sequence[bool]) -> dict[str, int]:
    """Per-item outcome pairs: both_right, fixed (base wrong, tuned right), broken, both_wrong."""
    if len(base) != len(tuned):
        raise ValueError(f"paired outcomes need equal lengths, got {len(base)} and {len(tuned)}")
    out = {"both_right": 0, "fixed": 0, "broken": 0, "both_wrong": 0}
    for b, t in zip(base, tuned, strict=True):
        key = ("both_right" if t else "broken") if b else ("fixed" if t else "both_wrong")
        out[key] += 1
    return out


def percent_decrease(start: float, end: float) -> float:
    """100 * (start - end) / start; a rise gives a negative number. start = 0 gives nan."""
    if start == 0:
        return math.nan
    return 100.0 * (start - end) / start


@dataclass(frozen=True)
class Trend:
    """OLS fit of y on x with a t-based confidence interval on the slope.

    `improving` reads y as a loss: True iff the whole slope CI is below zero, False iff it is
    entirely above zero, None when it contains zero or there are too few points.
    """

    slope: float
    intercept: float
    ci_low: float
    ci_high: float
    n: int
    p_value: float
    improving: bool | None

    @property
    def verdict(self) -> str:
        if self.n < 3 or math.isnan(self.ci_low):
            return "too few points"
        if self.improving is True:
            return "still decreasing"
        if self.improving is False:
            return "increasing"
        return "flat (no significant trend)"


def trend(xs: Sequence[float], ys: Sequence[float], confidence: float = 0.95) -> Trend:
    """Slope of ys over xs (e.g. validation loss over steps) with its confidence interval.

    Non-finite points (a NaN loss) are dropped. With fewer than 3 points, or all xs equal, the
    CI cannot be estimated: it is NaN and the verdict is 'too few points'.
    """
    _check_confidence(confidence)
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys need equal lengths, got {len(xs)} and {len(ys)}")
    pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    n = len(pts)
    nan = math.nan
    if n < 3 or len({x for x, _ in pts}) < 2:
        slope = intercept = nan
        if n == 2 and pts[0][0] != pts[1][0]:
            (x0, y0), (x1, y1) = pts
            slope = (y1 - y0) / (x1 - x0)
            intercept = y0 - slope * x0
        return Trend(slope, intercept, nan, nan, n, nan, None)
    x = [p[0] for p in pts]
    y = [p[1] for p in pts]
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((xi - mx) ** 2 for xi in x)
    slope = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True)) / sxx
    intercept = my - slope * mx
    ssr = sum((yi - intercept - slope * xi) ** 2 for xi, yi in zip(x, y, strict=True))
    # Same estimate as scipy.stats.linregress, but a perfect fit (ssr = 0, e.g. a constant loss)
    # gets a zero-width CI instead of NaN, so a flat line reads 'flat' rather than 'too few points'.
    se = math.sqrt(ssr / (n - 2) / sxx)
    df = n - 2
    half = float(_st.t.ppf(0.5 + confidence / 2, df=df)) * se
    lo, hi = slope - half, slope + half
    improving = True if hi < 0 else False if lo > 0 else None
    # A perfect fit has no noise: any non-zero slope is certain, a zero slope is no trend.
    p = float(2 * _st.t.sf(abs(slope / se), df=df)) if se > 0 else (0.0 if slope != 0 else 1.0)
    return Trend(slope, intercept, lo, hi, n, p, improving)


def _vote_key(answer: str) -> str:
    # '$18', '18.00' and '18' are one vote; a non-numeric answer votes as its stripped text.
    norm = normalize_number(answer)
    return norm if norm is not None else answer.strip()


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """Most common answer (numerically equal answers count together), ties to the one seen first.

    None (no answer extracted) does not vote; returns the first-seen spelling of the winner, or
    None if nothing voted.
    """
    counts: dict[str, int] = {}
    first: dict[str, str] = {}
    for a in answers:
        if a is None:
            continue
        key = _vote_key(a)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, a)
    if not counts:
        return None
    best = max(counts.values())
    winner = next(k for k in counts if counts[k] == best)  # dicts keep first-seen order
    return first[winner]


def agreement(answers: Sequence[str | None]) -> float:
    """Share of all samples (None included) that give the majority answer; nan if empty."""
    if not answers:
        return math.nan
    winner = majority_vote(answers)
    if winner is None:
        return 0.0
    key = _vote_key(winner)
    return sum(1 for a in answers if a is not None and _vote_key(a) == key) / len(answers)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
