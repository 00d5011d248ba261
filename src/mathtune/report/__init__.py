"""The analysis report: Markdown and self-contained HTML from run artifacts."""
