"""Statistics for the report (OWNED BY: helper 'pure'; contract fixed).

Contract:
    wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]
    mcnemar_exact(b: int, c: int) -> float          # two-sided exact p-value on discordant counts
    percent_decrease(start: float, end: float) -> float   # 100 * (start - end) / start
    trend(xs, ys, confidence=0.95) -> Trend          # OLS slope with CI; Trend(slope, ci_low, ci_high, n, improving: bool|None)
"""
