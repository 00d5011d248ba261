"""Accuracy by the number of reasoning steps in the gold solution ("multi-step arithmetic", measured).

A step is one calculator annotation `<<48/2=24>>` in the GSM8K gold solution. A solution without
annotations (some hand-written sets) counts its lines holding an `a op b = c` equation instead.
Buckets: 1, 2, ..., 7 and 8+ (0 only for a gold solution with no computation at all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_ANNOTATION = re.compile(r"<<[^<>]*>>")
# An arithmetic equation: number, operator, number, ..., '=' number.
_EQUATION = re.compile(r"\d[\d,.]*\s*[-+*/x×÷]\s*[\d(][^=\n]*=\s*\$?-?\d")
MAX_BUCKET = 8


def count_gold_steps(solution: str) -> int:
    n = len(_ANNOTATION.findall(solution))
    if n:
        return n
    body = solution.split("####", 1)[0]
    return sum(1 for line in body.splitlines() if _EQUATION.search(line))


def bucket_label(steps: int) -> str:
    return f"{MAX_BUCKET}+" if steps >= MAX_BUCKET else str(steps)


def bucket_order(label: str) -> int:
    return int(label.rstrip("+"))


@dataclass(frozen=True)
class StepBucket:
    label: str
    n: int
    correct: int
    acc: float
    ci_low: float
    ci_high: float


def accuracy_by_steps(records: list[dict[str, Any]], headline: str = "flexible") -> list[StepBucket]:
    """One row per step bucket present in `records`, with a 95% Wilson interval."""
    from mathtune.analysis.stats import wilson_interval

    key = f"correct_{headline}"
    counts: dict[str, list[int]] = {}
    for r in records:
        label = bucket_label(count_gold_steps(r.get("gold_solution") or ""))
        c = counts.setdefault(label, [0, 0])
        c[0] += 1
        c[1] += 1 if r.get(key) else 0
    rows = []
    for label in sorted(counts, key=bucket_order):
        n, k = counts[label]
        lo, hi = wilson_interval(k, n)
        rows.append(StepBucket(label, n, k, k / n, float(lo), float(hi)))
    return rows
