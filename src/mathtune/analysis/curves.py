"""Learning-curve summary from metrics.jsonl: start / best / end, percent decrease, final trend.

The trend is an OLS slope over the last `window` share of logged points with a confidence
interval (mathtune.analysis.stats.trend). The loss is called "still improving" only when the
whole interval lies below zero, "getting worse" only when it lies above; anything else is "no
clear trend", which is what a short or noisy run usually shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathtune.io import read_jsonl

MIN_TREND_POINTS = 3


@dataclass(frozen=True)
class SeriesSummary:
    name: str
    n: int
    start: float
    start_step: int
    best: float
    best_step: int
    end: float
    end_step: int
    pct_decrease: float | None  # start -> end, percent of start
    pct_decrease_best: float | None  # start -> best


@dataclass(frozen=True)
class TrendSummary:
    series: str
    n: int  # points in the window
    first_step: int
    last_step: int
    slope: float  # loss units per optimizer step
    ci_low: float
    ci_high: float
    p_value: float | None
    confidence: float
    verdict: str  # "still improving" | "getting worse" | "no clear trend"


@dataclass
class CurveSummary:
    train: SeriesSummary | None
    val: SeriesSummary | None
    train_trend: TrendSummary | None
    val_trend: TrendSummary | None
    trend_window: float
    token_acc: tuple[float, float] | None  # train mean_token_accuracy first -> last logged
    val_token_acc: tuple[float, float] | None  # eval_mean_token_accuracy first -> last
    recommendation: str
    steps: list[int] = field(default_factory=list)


def load_metrics(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, eval rows) from metrics.jsonl, each sorted by step; a resumed run may log a
    step twice, the later line wins."""
    train: dict[int, dict[str, Any]] = {}
    evals: dict[int, dict[str, Any]] = {}
    for row in read_jsonl(path):
        step = row.get("step")
        if not isinstance(step, int):
            continue
        if row.get("kind") == "train":
            train[step] = row
        elif row.get("kind") == "eval":
            evals[step] = row
    return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)]


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _points(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(r["step"], float(r[key])) for r in rows if _finite(r.get(key))]


def percent_decrease(start: float, end: float) -> float | None:
    if start == 0:
        return None
    from mathtune.analysis.stats import percent_decrease as _pd

    return float(_pd(start, end))


def summarize_series(name: str, points: list[tuple[int, float]]) -> SeriesSummary | None:
    if not points:
        return None
    start_step, start = points[0]
    end_step, end = points[-1]
    best_step, best = min(points, key=lambda p: (p[1], p[0]))
    return SeriesSummary(
        name=name,
        n=len(points),
        start=start,
        start_step=start_step,
        best=best,
        best_step=best_step,
        end=end,
        end_step=end_step,
        pct_decrease=percent_decrease(start, end),
        pct_decrease_best=percent_decrease(start, best),
    )


def window_points(points: list[tuple[int, float]], window: float) -> list[tuple[int, float]]:
    """The last ceil(window * n) points, at least MIN_TREND_POINTS (when there are that many)."""
    if not points:
        return []
    k = max(MIN_TREND_POINTS, math.ceil(window * len(points)))
    return points[-k:]


def trend_of(name: str, points: list[tuple[int, float]], window: float, confidence: float = 0.95):
    pts = window_points(points, window)
    if len(pts) < MIN_TREND_POINTS:
        return None
    from mathtune.analysis.stats import trend

    t = trend([float(s) for s, _ in pts], [v for _, v in pts], confidence)
    lo, hi = float(t.ci_low), float(t.ci_high)
    if hi < 0:
        verdict = "still improving"
    elif lo > 0:
        verdict = "getting worse"
    else:
        verdict = "no clear trend"
    p = getattr(t, "p_value", None)
    return TrendSummary(
        series=name,
        n=len(pts),
        first_step=pts[0][0],
        last_step=pts[-1][0],
        slope=float(t.slope),
        ci_low=lo,
        ci_high=hi,
        p_value=float(p) if _finite(p) else None,
        confidence=confidence,
        verdict=verdict,
    )


def recommend(val_trend: TrendSummary | None, train_trend: TrendSummary | None, early_stopped: bool) -> str:
    """The more-epochs recommendation, from the validation trend when there is one."""
    if early_stopped:
        return (
            "Early stopping fired: validation loss stopped improving, so more epochs at this learning "
            "rate are not indicated; the adapter kept is the best checkpoint."
        )
    t = val_trend or train_trend
    if t is None:
        return (
            f"Too few logged points for a trend (need {MIN_TREND_POINTS} in the final window); "
            "no recommendation on more epochs."
        )
    which = "validation" if t is val_trend else "training (no validation trend available)"
    ci = f"slope {t.slope:.3g}/step, {t.confidence:.0%} CI [{t.ci_low:.3g}, {t.ci_high:.3g}]"
    if t.verdict == "still improving":
        return f"Train longer: the {which} loss was still falling at the end ({ci})."
    if t.verdict == "getting worse":
        return f"Do not train longer: the {which} loss was rising at the end ({ci}); consider fewer steps."
    return (
        f"More epochs are not clearly indicated: the {which} loss shows no significant slope over "
        f"the final window ({ci})."
    )


def summarize_curves(
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    *,
    trend_window: float = 0.25,
    early_stopped: bool = False,
    confidence: float = 0.95,
) -> CurveSummary:
    tr = _points(train_rows, "loss")
    va = _points(eval_rows, "eval_loss")
    train_trend = trend_of("train loss", tr, trend_window, confidence)
    val_trend = trend_of("validation loss", va, trend_window, confidence)
    acc = _points(train_rows, "mean_token_accuracy")
    vacc = _points(eval_rows, "eval_mean_token_accuracy")
    return CurveSummary(
        train=summarize_series("train loss", tr),
        val=summarize_series("validation loss", va),
        train_trend=train_trend,
        val_trend=val_trend,
        trend_window=trend_window,
        token_acc=(acc[0][1], acc[-1][1]) if acc else None,
        val_token_acc=(vacc[0][1], vacc[-1][1]) if vacc else None,
        recommendation=recommend(val_trend, train_trend, early_stopped),
        steps=sorted({s for s, _ in tr} | {s for s, _ in va}),
    )
