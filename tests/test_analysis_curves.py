"""Learning-curve summary: start / best / end, percent decrease, final-window trend, recommendation."""

from __future__ import annotations

import json

import pytest

from mathtune.analysis.curves import load_metrics, summarize_curves, window_points


def train_rows(losses: list[float], every: int = 10) -> list[dict]:
    return [
        {
            "kind": "train",
            "step": every * (i + 1),
            "loss": v,
            "mean_token_accuracy": 0.5 + 0.01 * i,
            "learning_rate": 1e-4,
        }
        for i, v in enumerate(losses)
    ]


def eval_rows(points: list[tuple[int, float]]) -> list[dict]:
    return [{"kind": "eval", "step": s, "eval_loss": v, "eval_mean_token_accuracy": 0.4} for s, v in points]


def test_start_best_end_and_percent():
    cs = summarize_curves(train_rows([2.0, 1.0, 1.5, 1.2]), eval_rows([(0, 4.0), (20, 2.0), (40, 3.0)]))
    t, v = cs.train, cs.val
    assert (t.start, t.start_step, t.best, t.best_step, t.end, t.end_step) == (2.0, 10, 1.0, 20, 1.2, 40)
    assert t.pct_decrease == pytest.approx(40.0) and t.pct_decrease_best == pytest.approx(50.0)
    assert (v.start, v.start_step, v.best, v.end) == (4.0, 0, 2.0, 3.0)
    assert v.pct_decrease == pytest.approx(25.0)
    assert cs.token_acc == pytest.approx((0.5, 0.53))


def test_window_takes_final_share_with_minimum_three():
    pts = [(i, float(i)) for i in range(20)]
    assert [s for s, _ in window_points(pts, 0.25)] == [15, 16, 17, 18, 19]
    assert len(window_points(pts, 0.05)) == 3
    assert window_points(pts[:2], 0.5) == pts[:2]


def test_still_improving_only_when_interval_excludes_zero():
    # the early part is flat; the final quarter falls steadily -> still improving
    losses = [2.0] * 12 + [1.9, 1.8, 1.7, 1.6]
    cs = summarize_curves(train_rows(losses), [], trend_window=0.25)
    assert cs.train_trend is not None and cs.train_trend.n == 4
    assert cs.train_trend.ci_high < 0 and cs.train_trend.verdict == "still improving"
    assert cs.recommendation.startswith("Train longer")
    # noisy, no slope in the final window -> no clear trend, no "train longer"
    cs = summarize_curves(train_rows([2.0, 1.0, 1.2, 1.0, 1.2, 1.0, 1.2, 1.1]), [], trend_window=0.5)
    assert cs.train_trend.verdict == "no clear trend"
    assert not cs.recommendation.startswith("Train longer")


def test_validation_trend_drives_the_recommendation():
    tr = train_rows([2.0, 1.8, 1.6, 1.4, 1.2, 1.0])  # train still falling
    ev = eval_rows([(0, 2.0), (20, 1.5), (40, 1.6), (60, 1.7), (80, 1.8)])  # validation rising
    cs = summarize_curves(tr, ev, trend_window=0.5)
    assert cs.val_trend.verdict == "getting worse"
    assert cs.recommendation.startswith("Do not train longer")
    assert "validation" in cs.recommendation
    early = summarize_curves(tr, ev, trend_window=0.5, early_stopped=True)
    assert "Early stopping fired" in early.recommendation


def test_too_few_points():
    cs = summarize_curves(train_rows([2.0, 1.0]), eval_rows([(0, 3.0)]))
    assert cs.train_trend is None and cs.val_trend is None
    assert "Too few" in cs.recommendation


def test_load_metrics_sorts_dedups_and_skips_null(tmp_path):
    p = tmp_path / "metrics.jsonl"
    lines = [
        {"kind": "eval", "step": 0, "eval_loss": 3.0},
        {"kind": "train", "step": 20, "loss": 1.0},
        {"kind": "train", "step": 10, "loss": None},  # NaN written as null
        {"kind": "train", "step": 20, "loss": 0.9},  # a resumed run re-logs step 20: the later line wins
    ]
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    tr, ev = load_metrics(p)
    assert [r["step"] for r in tr] == [10, 20] and tr[1]["loss"] == 0.9
    cs = summarize_curves(tr, ev)
    assert cs.train.n == 1 and cs.train.start == 0.9
