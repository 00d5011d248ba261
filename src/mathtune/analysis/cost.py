"""Compute time and cost of a run: price per device hour times the wall time of its stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cost:
    seconds: float
    device_hours: float
    price_per_hour: float
    dollars: float
    device: str  # "cpu" / "cuda"
    device_label: str
    source: str  # where the seconds came from

    @property
    def text(self) -> str:
        kind = "CPU" if self.device == "cpu" else self.device_label
        return (
            f"${self.dollars:.2f} at ${self.price_per_hour:.2f}/h ({kind}; "
            f"{format_seconds(self.seconds)} = {self.device_hours:.3f} device-hours, {self.source})"
        )


def format_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def stage_seconds(stages: dict[str, Any] | None) -> dict[str, float]:
    """Wall seconds per stage from stages.json ({"stages": {name: {"seconds": ...}}})."""
    out: dict[str, float] = {}
    for name, st in ((stages or {}).get("stages") or {}).items():
        sec = st.get("seconds") if isinstance(st, dict) else None
        if isinstance(sec, int | float):
            out[name] = float(sec)
    return out


def compute_cost(
    *,
    price_per_hour: float,
    stages: dict[str, Any] | None,
    train_summary: dict[str, Any] | None,
    eval_summaries: list[dict[str, Any]],
    device_label: str | None = None,
) -> Cost:
    """Cost of the device time. Prefer the pipeline's stage wall times (everything the device was
    busy with); without stages.json fall back to training seconds plus generation seconds."""
    per_stage = stage_seconds(stages)
    if per_stage:
        seconds, source = sum(per_stage.values()), "sum of stage wall times"
    else:
        seconds = float((train_summary or {}).get("train_seconds") or 0.0)
        seconds += sum(float(s.get("generation_seconds") or 0.0) for s in eval_summaries)
        source = "training + generation seconds"
    ts = train_summary or {}
    device = str(ts.get("device") or next((s.get("device") for s in eval_summaries if s.get("device")), "cpu"))
    label = device_label or str(ts.get("device_name") or device)
    hours = seconds / 3600.0
    return Cost(
        seconds=seconds,
        device_hours=hours,
        price_per_hour=float(price_per_hour),
        dollars=hours * float(price_per_hour),
        device="cpu" if device.startswith("cpu") else device,
        device_label=label,
        source=source,
    )
