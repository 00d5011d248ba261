"""The run-directory guard every stage goes through before it does any work.

A run directory is the contract between stages (docs/artifacts.md), so a stage must never mix its
new artifacts with an older run's, never silently continue a run made with other settings, and
never delete anything it did not write. `prepare_run_dir` enforces that, before a model is loaded:

- a directory holding this stage's artifacts is refused unless `--resume` or `--overwrite` is given
  (a finished run gets its own message);
- `--resume` with a `config.yaml` whose result-relevant fields differ is refused, naming the fields;
- `--overwrite` removes only the stage's known artifact names inside the directory;
- the directory must be writable; then the resolved config is saved as `config.yaml`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mathtune.config import RunConfig, load_config, save_config
from mathtune.errors import RunExistsError, UserError
from mathtune.io import check_writable_dir, confined

CONFIG_NAME = "config.yaml"

# Artifact names (files or directories directly under the run directory) that each stage owns.
# `--overwrite` removes exactly these names and nothing else.
STAGE_ARTIFACTS: dict[str, tuple[str, ...]] = {
    "train": ("data_split.json", "metrics.jsonl", "train_summary.json", "checkpoints", "adapter"),
    "eval": ("eval",),
    "report": ("plots", "report.md", "report.html"),
}
STAGE_ARTIFACTS["run"] = (
    *STAGE_ARTIFACTS["train"],
    *STAGE_ARTIFACTS["eval"],
    *STAGE_ARTIFACTS["report"],
    "stages.json",
)

# The file whose `"status": "finished"` marks a stage as complete.
FINISHED_MARKERS: dict[str, tuple[str, ...]] = {
    "train": ("train_summary.json",),
    "run": ("stages.json", "train_summary.json"),
}

# Config sections/fields that shape a stage's result; a resumed stage must match them exactly.
# Fields like thread count or experiment trackers change how a run is watched, not what it computes.
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "train": ("seed", "model", "data", "lora", "train"),
    "eval": ("seed", "model", "eval"),
    "report": ("report",),
    "run": ("seed", "model", "data", "lora", "train", "eval"),
}
RESUME_IGNORED = {"train.num_threads", "train.report_to", "eval.batch_size", "eval.backend"}


def stage_artifacts(run_dir: Path, stage: str) -> list[Path]:
    """The stage's artifacts that exist in `run_dir`."""
    return [run_dir / name for name in _artifact_names(stage) if (run_dir / name).exists()]


def _artifact_names(stage: str) -> tuple[str, ...]:
    try:
        return STAGE_ARTIFACTS[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGE_ARTIFACTS)}") from None


def is_finished(run_dir: Path, stage: str = "train") -> bool:
    """True when the stage's marker file says `status: finished`."""
    for name in FINISHED_MARKERS.get(stage, ()):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("status") == "finished":
            return True
    return False


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: RunConfig, new: RunConfig, stage: str = "run") -> list[str]:
    """Dotted names of the result-relevant fields that differ between two configs."""
    roots = STAGE_FIELDS.get(stage, STAGE_FIELDS["run"])
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] not in roots or key in RESUME_IGNORED:
            continue
        if a.get(key) != b.get(key):
            diffs.append(key)
    return diffs


def _describe(diffs: list[str], old: RunConfig, new: RunConfig) -> str:
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    shown = [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in diffs[:5]]
    more = f" and {len(diffs) - 5} more" if len(diffs) > 5 else ""
    return ", ".join(shown) + more


def remove_stage_artifacts(run_dir: Path, stage: str) -> list[Path]:
    """Delete the stage's known artifacts in `run_dir` (and nothing else); returns what was removed."""
    removed = []
    for name in _artifact_names(stage):
        # confined(): a symlinked artifact pointing outside the run directory is refused, not followed.
        path = run_dir / name
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_symlink():
            path.unlink()
        else:
            confined(run_dir, name)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        removed.append(path)
    return removed


def prepare_run_dir(run_dir: str | Path, cfg: RunConfig, *, overwrite: bool, resume: bool, stage: str) -> Path:
    """Check `run_dir` can take this stage's output, clear it if asked, save `config.yaml`.

    Raises UserError (exit 2) with nothing touched when the directory holds this stage's artifacts
    and neither `overwrite` nor `resume` is set, or when `resume` meets a config that differs in a
    result-relevant field.
    """
    run_dir = Path(run_dir)
    _artifact_names(stage)  # unknown stage: programming error, raise before touching anything
    if overwrite and resume:
        raise UserError("--overwrite and --resume exclude each other: pick one")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: output path exists and is not a directory")

    existing = stage_artifacts(run_dir, stage) if run_dir.is_dir() else []
    cfg_path = run_dir / CONFIG_NAME
    if existing and not (overwrite or resume):
        if is_finished(run_dir, stage):
            raise RunExistsError(
                f"{run_dir}: holds a finished {stage} run; pass --overwrite to replace it or choose another --output"
            )
        raise RunExistsError(
            f"{run_dir}: holds an unfinished {stage} run ({existing[0].name}); pass --resume to continue it "
            "or --overwrite to start over"
        )
    if resume and cfg_path.is_file():
        old = load_config(cfg_path)
        diffs = config_differences(old, cfg, stage)
        if diffs:
            raise UserError(
                f"{cfg_path}: cannot resume, the config differs in {_describe(diffs, old, cfg)}; "
                "resume with the same settings or pass --overwrite"
            )

    check_writable_dir(run_dir)
    if overwrite:
        remove_stage_artifacts(run_dir, stage)
    save_config(cfg, cfg_path)
    return run_dir
