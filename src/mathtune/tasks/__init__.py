"""Evaluation tasks beyond GSM8K: multiple choice (ARC, MMLU, HellaSwag), GSM-Symbolic, self-verification.

`evaluate_task(name, ...)` runs one task and writes `records.jsonl` + `summary.json` under `output`
(see docs/tasks.md for each task's template, scoring and data). `TASKS` lists the task names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathtune.errors import UserError
from mathtune.locks import holds_dir_lock


@dataclass(frozen=True)
class TaskInfo:
    name: str
    kind: str  # "multiple_choice" | "generation"
    description: str


TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("arc_easy", "multiple_choice", "ARC-Easy test, zero-shot log-likelihood (lm-eval arc_easy)"),
        TaskInfo(
            "arc_challenge", "multiple_choice", "ARC-Challenge test, zero-shot log-likelihood (lm-eval arc_challenge)"
        ),
        TaskInfo("mmlu", "multiple_choice", "MMLU test, 57 subjects, zero-shot log-likelihood (lm-eval mmlu)"),
        TaskInfo("hellaswag", "multiple_choice", "HellaSwag validation, zero-shot log-likelihood (lm-eval hellaswag)"),
        TaskInfo(
            "gsm_symbolic", "generation", "GSM-Symbolic variants (reasoning-gym) vs the GSM8K test items they come from"
        ),
        TaskInfo(
            "gsm8k_selfverify", "generation", "GSM8K with a second self-verification turn: accuracy before/after, flips"
        ),
    )
}


@holds_dir_lock("output")
def evaluate_task(
    task: str,
    *,
    model: str,
    adapter: str | None = None,
    data: str | None = None,
    limit: int | None = None,
    output: Path,
    batch_size: int = 16,
    dtype: str = "auto",
    seed: int = 42,
    overwrite: bool = False,
    progress: bool = True,
    loaded: tuple | None = None,
    engine: str = "auto",
) -> dict[str, Any]:
    """Run `task` and return its summary (also written to `output/summary.json`).

    `loaded` = (model, tokenizer[, resolved]) reuses a model already in memory. `engine` is the hf
    decode path of the generation tasks (auto, fast or transformers; see mathtune.generate.hf);
    multiple-choice tasks score log-likelihoods with transformers and take none.
    """
    if task not in TASKS:
        raise UserError(f"unknown task '{task}' (known: {', '.join(TASKS)})")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    kw: dict[str, Any] = dict(
        model=model,
        adapter=adapter,
        data=data,
        limit=limit,
        output=Path(output),
        batch_size=batch_size,
        dtype=dtype,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
        loaded=loaded,
    )
    if TASKS[task].kind == "multiple_choice":
        from mathtune.tasks.mc import evaluate_mc

        return evaluate_mc(task, **kw)
    kw["engine"] = engine
    if task == "gsm_symbolic":
        from mathtune.tasks.symbolic import evaluate_gsm_symbolic

        return evaluate_gsm_symbolic(**kw)
    from mathtune.tasks.multiturn import evaluate_selfverify

    return evaluate_selfverify(**kw)


__all__ = ["TASKS", "TaskInfo", "evaluate_task"]
