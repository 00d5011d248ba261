"""Report figures as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from mathtune.io import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _pts(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, int | float) and math.isfinite(v):
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def learning_curve(train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], path: Path) -> Path:
    """Train and validation loss over steps; learning rate on a secondary axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    xs, ys = _pts(train_rows, "loss")
    if xs:
        ax.plot(xs, ys, label="train loss", color="#1f77b4", marker="." if len(xs) < 40 else None)
    vx, vy = _pts(eval_rows, "eval_loss")
    if vx:
        ax.plot(vx, vy, label="validation loss", color="#d62728", marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (completion tokens)")
    ax.grid(alpha=0.3)
    lx, ly = _pts(train_rows, "learning_rate")
    handles, labels = ax.get_legend_handles_labels()
    if lx:
        ax2 = ax.twinx()
        ax2.plot(lx, ly, color="#7f7f7f", linestyle="--", label="learning rate")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title("Learning curve")
    return _save(fig, path)


def grouped_bars(
    groups: list[str],
    series: dict[str, list[tuple[float, float, float] | None]],
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str = "accuracy",
    counts: dict[str, list[int]] | None = None,
) -> Path:
    """Bars per group for each series, with (value, ci_low, ci_high) error bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(groups) * max(1, len(series))), 4.0))
    width = 0.8 / max(1, len(series))
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]
    for i, (name, vals) in enumerate(series.items()):
        xs, ys, lo, hi = [], [], [], []
        for j, v in enumerate(vals):
            if v is None:
                continue
            xs.append(j + (i - (len(series) - 1) / 2) * width)
            ys.append(v[0])
            lo.append(max(0.0, v[0] - v[1]))
            hi.append(max(0.0, v[2] - v[0]))
        ax.bar(xs, ys, width=width, label=name, color=colors[i % len(colors)], yerr=[lo, hi], capsize=3)
        if counts and name in counts:
            for x, n in zip(xs, counts[name], strict=False):
                ax.annotate(f"n={n}", (x, 0), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def category_bars(categories: list[str], series: dict[str, list[int]], path: Path, *, title: str) -> Path:
    """Horizontal bars: count of wrong answers per error category, per model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 0.5 + 0.45 * len(categories) * max(1, len(series))))
    height = 0.8 / max(1, len(series))
    colors = ["#1f77b4", "#ff7f0e"]
    for i, (name, vals) in enumerate(series.items()):
        ys = [j + (i - (len(series) - 1) / 2) * height for j in range(len(categories))]
        ax.barh(ys, vals, height=height, label=name, color=colors[i % len(colors)])
    ax.set_yticks(range(len(categories)))
    ax.set_yticklabels(categories)
    ax.invert_yaxis()
    ax.set_xlabel("wrong answers")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)
