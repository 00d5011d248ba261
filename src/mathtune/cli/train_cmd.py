"""`mathtune train`: LoRA fine-tuning into a run directory (thin wrapper over mathtune.train.train)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mathtune.cli import app


def build_train_config(
    config: Path | None,
    output: Path | None,
    *,
    resume: bool,
    sets: list[str] | None,
    max_steps: int | None = None,
    train_limit: int | None = None,
    report_to: list[str] | None = None,
):
    """Config for `mathtune train`: file (or, on --resume without --config, the run's own config.yaml),
    then --set overrides, then the dedicated flags. Returns (cfg, run_dir)."""
    from mathtune.config import load_config, parse_overrides

    overrides = parse_overrides(sets)
    flags: dict = {}
    if max_steps is not None:
        flags.setdefault("train", {})["max_steps"] = max_steps
    if train_limit is not None:
        flags.setdefault("data", {})["train_limit"] = train_limit
    if report_to:
        flags.setdefault("train", {})["report_to"] = report_to
    for section, values in flags.items():
        overrides.setdefault(section, {}).update(values)

    base = config
    if base is None and resume and output is not None and (output / "config.yaml").is_file():
        base = output / "config.yaml"  # resuming: the run's own settings, not the defaults
    cfg = load_config(base, overrides or None)
    run_dir = output if output is not None else Path("runs") / cfg.name
    return cfg, run_dir


@app.command("train")
def train_command(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Run config YAML.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run directory (default runs/<name>).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimizer steps.")] = None,
    train_limit: Annotated[
        int | None, typer.Option("--train-limit", help="Train on the first N records of the train part.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous training run.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last good checkpoint.")] = False,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config value: section.key=value (repeatable).")
    ] = None,
    report_to: Annotated[
        list[str] | None, typer.Option("--report-to", help="Also log to tensorboard, wandb or mlflow.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """LoRA-fine-tune the model on GSM8K train; writes metrics.jsonl, checkpoints/ and adapter/."""
    from mathtune.train import train

    cfg, run_dir = build_train_config(
        config, output, resume=resume, sets=sets, max_steps=max_steps, train_limit=train_limit, report_to=report_to
    )
    summary = train(cfg, run_dir, resume=resume, overwrite=overwrite, progress=not quiet)
    loss = summary.get("best_eval_loss")
    loss_txt = f"{loss:.4f}" if isinstance(loss, float) else "n/a"
    print(
        f"trained {summary['global_step']} steps in {summary['train_seconds']:.0f}s "
        f"({summary['tokens_per_second']} tok/s, {summary['precision']}); best validation loss {loss_txt}"
        + (" (early stopped)" if summary.get("early_stopped") else "")
    )
    print(f"metrics: {run_dir / 'metrics.jsonl'}")
    print(f"adapter: {run_dir / 'adapter'}")
