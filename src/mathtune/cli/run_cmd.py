"""`mathtune run`: the whole pipeline (thin wrapper over mathtune.pipeline.run_pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mathtune.cli import app


def build_run_config(
    config: Path | None,
    output: Path | None,
    *,
    sets: list[str] | None,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    max_steps: int | None = None,
    tasks: str | None = None,
):
    """Config file (or, rerunning without --config, the run's own config.yaml), then --set, then the
    dedicated flags. Returns (cfg, run_dir)."""
    from mathtune.config import load_config, parse_overrides

    overrides = parse_overrides(sets)
    flags: dict = {}
    if train_limit is not None:
        flags.setdefault("data", {})["train_limit"] = train_limit
    if eval_limit is not None:
        flags.setdefault("eval", {})["limit"] = eval_limit
    if max_steps is not None:
        flags.setdefault("train", {})["max_steps"] = max_steps
    if tasks is not None:
        flags.setdefault("eval", {})["tasks"] = [t.strip() for t in tasks.split(",") if t.strip()]
    for section, values in flags.items():
        overrides.setdefault(section, {}).update(values)
    base = config
    if base is None and output is not None and (output / "config.yaml").is_file():
        base = output / "config.yaml"  # rerunning a run: its own settings, not the defaults
    cfg = load_config(base, overrides or None)
    return cfg, (output if output is not None else Path("runs") / cfg.name)


@app.command("run")
def run_command(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Run config YAML.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run directory (default runs/<name>).")] = None,
    train_limit: Annotated[
        int | None, typer.Option("--train-limit", help="Train on the first N records of the train part.")
    ] = None,
    eval_limit: Annotated[int | None, typer.Option("--eval-limit", help="Evaluate the first N test items.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop training after N optimizer steps.")] = None,
    tasks: Annotated[
        str | None, typer.Option("--tasks", help="Tasks besides GSM8K, comma-separated (arc_easy,mmlu,...).")
    ] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config value: section.key=value (repeatable).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over, replacing this run's artifacts.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Baseline eval -> LoRA fine-tune -> tuned eval (same items) -> extras -> report. Reruns resume."""
    from mathtune.pipeline import print_summary, run_pipeline

    cfg, run_dir = build_run_config(
        config, output, sets=sets, train_limit=train_limit, eval_limit=eval_limit, max_steps=max_steps, tasks=tasks
    )
    report = run_pipeline(cfg, run_dir, overwrite=overwrite, progress=not quiet)
    print_summary(run_dir, report)
