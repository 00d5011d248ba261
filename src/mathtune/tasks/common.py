"""Pieces every task shares: accuracy entries with intervals, output-dir handling, model loading."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mathtune.errors import RunExistsError
from mathtune.io import atomic_write_json, check_writable_dir, iter_jsonl, read_json

RECORDS = "records.jsonl"
SUMMARY = "summary.json"
# Written when a run starts; a rerun resumes only when its settings are identical.
RUN_SETTINGS = ".task_settings.json"


def acc_entry(correct: int, n: int) -> dict[str, Any]:
    """{acc, correct, n, ci_low, ci_high}: 95% Wilson interval, as every summary in mathtune."""
    from mathtune.analysis.stats import wilson_interval

    lo, hi = wilson_interval(correct, n) if n else (float("nan"), float("nan"))
    return {"acc": correct / n if n else float("nan"), "correct": correct, "n": n, "ci_low": lo, "ci_high": hi}


def ids_sha(ids: Iterable[str]) -> str:
    """Fingerprint of the evaluated item set: two summaries with equal shas scored the same items."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()[:16]


def prepare_output(output: Path, settings: dict[str, Any], *, overwrite: bool) -> dict[str, dict] | None:
    """Make `output` ready and return the finished records to skip ({id: record}).

    Returns None when a finished summary with the same settings is already there (nothing to do).
    A finished or partial run with other settings is refused unless `overwrite`.
    """
    output = check_writable_dir(output)
    summary, records, marker = output / SUMMARY, output / RECORDS, output / RUN_SETTINGS
    if overwrite:
        for p in (summary, records, marker):
            p.unlink(missing_ok=True)
    if marker.exists():
        old = read_json(marker)
        if old != json.loads(json.dumps(settings, default=str)):
            raise RunExistsError(
                f"{output}: holds an evaluation with other settings; pass --overwrite or another output"
            )
        if summary.exists():
            return None
    elif summary.exists() or records.exists():
        raise RunExistsError(f"{output}: holds an evaluation from another run; pass --overwrite or another output")
    atomic_write_json(marker, settings)
    done: dict[str, dict] = {}
    if records.exists():
        for rec in iter_jsonl(records):
            if isinstance(rec.get("id"), str):
                done[rec["id"]] = rec
    return done


def existing_summary(output: Path) -> dict[str, Any]:
    return read_json(Path(output) / SUMMARY)


def get_model(model: str, *, adapter: str | None, dtype: str, loaded: tuple | None):
    """(model, tokenizer): the preloaded pair when given, else load once here."""
    if loaded is not None:
        return loaded[0], loaded[1]
    from mathtune.models import load_model

    m, tok, _ = load_model(model, dtype=dtype, adapter=adapter)
    return m, tok
