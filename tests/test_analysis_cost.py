"""Cost: price per hour times device hours, from stage wall times (or train + generation seconds)."""

from __future__ import annotations

import pytest

from mathtune.analysis.cost import compute_cost, format_seconds


def test_cost_from_stage_times():
    stages = {
        "stages": {
            "train": {"status": "done", "seconds": 1800.0},
            "eval-base": {"seconds": 1800.0},
            "report": {"seconds": None},
        }
    }
    c = compute_cost(
        price_per_hour=2.5, stages=stages, train_summary={"device": "cuda", "device_name": "H100"}, eval_summaries=[]
    )
    assert c.seconds == 3600.0 and c.device_hours == pytest.approx(1.0) and c.dollars == pytest.approx(2.5)
    assert c.text.startswith("$2.50 at $2.50/h (H100")


def test_cpu_run_reports_zero_price_and_time():
    c = compute_cost(
        price_per_hour=0.0,
        stages=None,
        train_summary={"train_seconds": 100.0, "device": "cpu"},
        eval_summaries=[{"generation_seconds": 20.0}, {"generation_seconds": None}],
    )
    assert c.seconds == 120.0 and c.dollars == 0.0
    assert c.text.startswith("$0.00 at $0.00/h (CPU; 2 min 00 s")


def test_format_seconds():
    assert format_seconds(None) == "n/a"
    assert format_seconds(5.25) == "5.2 s"
    assert format_seconds(3725) == "1 h 02 min"
