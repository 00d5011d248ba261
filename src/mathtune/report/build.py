"""Build report.md and a self-contained report.html from a run directory's artifacts.

Nothing is recomputed and no model is loaded: every number comes from config.yaml, stages.json,
metrics.jsonl, train_summary.json and eval/<tag>/{summary.json,records.jsonl}. A stage that did
not run leaves its section saying "not run".

The report is a list of sections, each a list of blocks (paragraph, table, image, list, example);
both templates render the same blocks, so the Markdown and HTML cannot disagree. Model output and
data text only ever appear in code blocks (Markdown: fenced; HTML: autoescaped <pre>).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from mathtune.io import atomic_write_text
from mathtune.report.artifacts import EvalRun, RunArtifacts, load_artifacts
from mathtune.report.format import acc_ci, paired, pct, pval
from mathtune.report.sections import (
    section_accuracy,
    section_general,
    section_overview,
    section_selfverify,
    section_symbolic,
    section_training,
)
from mathtune.report.sections_analysis import (
    section_appendix,
    section_conclusions,
    section_errors,
    section_references,
)

__all__ = ["EvalRun", "RunArtifacts", "acc_ci", "build_report", "load_artifacts", "paired", "pct", "pval"]


def build_sections(a: RunArtifacts, plots: dict[str, Path]) -> list[dict[str, Any]]:
    from mathtune.references import hub_id_for_spec

    ctx: dict[str, Any] = {"hub_id": hub_id_for_spec(a.cfg.model.spec)}
    sections = [
        ("overview", "1. Overview", section_overview(a, ctx)),
        ("training", "2. Training", section_training(a, ctx, plots)),
        ("accuracy", "3. Task accuracy (GSM8K)", section_accuracy(a, ctx, plots)),
        ("general", "3a. General ability", section_general(a, ctx)),
        ("robustness", "3b. GSM-Symbolic robustness", section_symbolic(a)),
        ("selfverify", "3c. Self-verification", section_selfverify(a)),
        ("errors", "4. Error analysis", section_errors(a, ctx, plots)),
        ("references", "5. References", section_references(a, ctx)),
        ("conclusions", "6. Conclusions and next steps", section_conclusions(a, ctx)),
        ("appendix", "Appendix", section_appendix()),
    ]
    return [{"id": i, "title": t, "blocks": b} for i, t, b in sections]


_MD_CELL = str.maketrans({"|": "\\|", "\n": " ", "\r": " "})


def md_text(s: str) -> str:
    """Our own prose in Markdown: raw HTML is neutralised, and so are link/image brackets, because prose
    quotes config values (run name, model spec) that must not become a link or a remote image.
    Backslashes are escaped first, so an input `\\[` cannot cancel the bracket's escape."""
    return html.escape(str(s), quote=False).replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def md_cell(s: str) -> str:
    return md_text(s).translate(_MD_CELL)


def md_fence(s: str) -> str:
    """A backtick fence longer than any backtick run inside `s`, so untrusted text cannot close it."""
    runs = [len(m) for m in re.findall(r"`+", str(s))]
    return "`" * max(3, max(runs, default=0) + 1)


def _env(autoescape: bool):
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mathtune.report", "templates"),
        autoescape=autoescape,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(md_text=md_text, md_cell=md_cell, md_fence=md_fence)
    return env


def render(a: RunArtifacts, sections: list[dict[str, Any]], plots: dict[str, Path]) -> tuple[str, str]:
    title = f"mathtune report: {a.cfg.name}"
    images_md = {k: f"plots/{p.name}" for k, p in plots.items()}
    images_html = {
        k: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii") for k, p in plots.items()
    }
    md = _env(False).get_template("report.md.j2").render(title=title, sections=sections, images=images_md)
    page = _env(True).get_template("report.html.j2").render(title=title, sections=sections, images=images_html)
    return md, page


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write report.md, report.html and plots/*.png in `run_dir`; return the two report paths."""
    a = load_artifacts(run_dir)
    plots: dict[str, Path] = {}
    sections = build_sections(a, plots)
    md, page = render(a, sections, plots)
    md_path = atomic_write_text(a.run_dir / "report.md", md)
    html_path = atomic_write_text(a.run_dir / "report.html", page)
    return md_path, html_path
