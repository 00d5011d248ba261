"""The run directory read back: config, stage log, training metrics and every evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathtune.errors import UserError
from mathtune.io import read_json, read_jsonl


@dataclass
class EvalRun:
    tag: str
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunArtifacts:
    run_dir: Path
    cfg: Any  # RunConfig
    stages: dict[str, Any] | None
    train_summary: dict[str, Any] | None
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    evals: dict[str, EvalRun]


def _maybe_json(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def load_artifacts(run_dir: str | Path) -> RunArtifacts:
    from mathtune.analysis.curves import load_metrics
    from mathtune.config import load_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    train_rows, eval_rows = ([], [])
    if (run_dir / "metrics.jsonl").is_file():
        train_rows, eval_rows = load_metrics(run_dir / "metrics.jsonl")
    evals: dict[str, EvalRun] = {}
    eval_root = run_dir / "eval"
    if eval_root.is_dir():
        for d in sorted(p for p in eval_root.iterdir() if p.is_dir()):
            if not (d / "summary.json").is_file():
                continue  # an interrupted evaluation: its section says "not run"
            summary = read_json(d / "summary.json")
            records = read_jsonl(d / "records.jsonl") if (d / "records.jsonl").is_file() else []
            evals[d.name] = EvalRun(d.name, summary, records)
    return RunArtifacts(
        run_dir=run_dir,
        cfg=cfg,
        stages=_maybe_json(run_dir / "stages.json"),
        train_summary=_maybe_json(run_dir / "train_summary.json"),
        train_rows=train_rows,
        eval_rows=eval_rows,
        evals=evals,
    )
