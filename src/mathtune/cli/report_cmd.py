"""`mathtune report`: rebuild report.md / report.html from a run directory's artifacts (no model loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mathtune.cli import app


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `mathtune run` (or train + eval).")],
) -> None:
    """Rebuild the analysis report from artifacts; recomputes nothing, loads no model."""
    from mathtune.report.build import build_report

    md, html = build_report(run_dir)
    print(f"report: {html}")
    print(f"report (markdown): {md}")
