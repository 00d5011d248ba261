"""`mathtune run`: baseline eval -> fine-tune -> tuned eval -> optional extras -> analysis report.

Each stage reads and writes run-directory artifacts (docs/artifacts.md), so a rerun resumes: a stage
whose artifacts are complete is skipped (train_summary.json present; eval/<tag>/summary.json present),
an interrupted one continues from what it wrote. stages.json records each stage's status and wall
time, written atomically after every change; the report's cost line is computed from it.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mathtune.config import RunConfig
from mathtune.io import atomic_write_json, read_json
from mathtune.locks import holds_dir_lock

STAGES_NAME = "stages.json"
GSM8K_LIKE = ("gsm_symbolic", "gsm8k_selfverify")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StageLog:
    """stages.json: {"status": running|finished|failed, "stages": {name: {status, seconds, ...}}}."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / STAGES_NAME
        old = read_json(self.path) if self.path.is_file() else {}
        self.data: dict[str, Any] = {"status": "running", "stages": dict(old.get("stages") or {})}
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.path, self.data)

    def get(self, name: str) -> dict[str, Any] | None:
        return self.data["stages"].get(name)

    def set(self, name: str, **fields: Any) -> None:
        self.data["stages"][name] = fields
        self._save()

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.data["finished_at"] = _now()
        self._save()


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"mathtune run: {msg}", file=sys.stderr, flush=True)


def run_stage(log: StageLog, name: str, done: Callable[[], bool], work: Callable[[], Any], *, progress: bool) -> Any:
    """Run `work` unless `done()` says its artifacts are complete; time it in stages.json."""
    if done():
        prev = log.get(name)
        if not prev or prev.get("status") != "done":
            log.set(name, status="done", seconds=None, note="found finished artifacts; not timed by this run")
        _say(progress, f"{name}: finished artifacts found, skipped")
        return None
    _say(progress, f"{name}: running")
    started = _now()
    log.set(name, status="running", seconds=None, started_at=started)
    t0 = time.perf_counter()
    try:
        out = work()
    except BaseException as e:
        log.set(
            name,
            status="failed",
            seconds=round(time.perf_counter() - t0, 3),
            started_at=started,
            finished_at=_now(),
            error=f"{type(e).__name__}: {e}"[:500],
        )
        raise
    log.set(name, status="done", seconds=round(time.perf_counter() - t0, 3), started_at=started, finished_at=_now())
    return out


class _Model:
    """One model (base, or base + adapter) loaded lazily and shared by the evaluations of a phase."""

    def __init__(self, cfg: RunConfig, adapter: Path | None):
        self.cfg, self.adapter, self._loaded = cfg, adapter, None

    def get(self) -> tuple:
        if self._loaded is None:
            from mathtune.models import load_model

            model, tok, resolved = load_model(
                self.cfg.model.spec,
                dtype=self.cfg.model.dtype,
                adapter=self.adapter,
                trust_remote_code=self.cfg.model.trust_remote_code,
                revision=self.cfg.model.revision,
            )
            self._loaded = (model, tok, resolved)
        return self._loaded

    def release(self) -> None:
        self._loaded = None
        gc.collect()


def _summary_done(out: Path) -> bool:
    return (out / "summary.json").is_file()


def _eval_gsm8k(cfg: RunConfig, out: Path, holder: _Model, *, sc: bool, progress: bool) -> dict[str, Any]:
    from mathtune.evaluate import evaluate_gsm8k

    e = cfg.eval
    kw: dict[str, Any] = cfg.gsm8k_eval_kwargs()
    kw.update(adapter=str(holder.adapter) if holder.adapter else None, output=out, overwrite=False, progress=progress)
    if sc:
        kw.update(limit=e.sc_limit or e.limit, samples=e.self_consistency, temperature=e.sc_temperature, top_p=e.top_p)
    else:
        kw.update(limit=e.limit, samples=e.samples, temperature=e.temperature, top_p=e.top_p)
    if e.backend == "hf":
        kw["loaded"] = holder.get()[:2]
    return evaluate_gsm8k(**kw)


def _eval_task(cfg: RunConfig, task: str, out: Path, holder: _Model, *, progress: bool) -> dict[str, Any]:
    from mathtune.tasks import evaluate_task

    return evaluate_task(
        task,
        model=cfg.model.spec,
        adapter=str(holder.adapter) if holder.adapter else None,
        data=cfg.eval_data if task in GSM8K_LIKE else None,
        limit=cfg.eval.limit_for(task),
        output=out,
        batch_size=cfg.eval.batch_size,
        dtype=cfg.model.dtype,
        seed=cfg.seed,
        overwrite=False,
        progress=progress,
        loaded=holder.get(),
        engine=cfg.eval.engine,
    )


def _eval_phase(cfg: RunConfig, run_dir: Path, log: StageLog, name: str, adapter: Path | None, progress: bool):
    """All evaluations of one model: greedy GSM8K, then self-consistency, then the other tasks."""
    holder = _Model(cfg, adapter)
    try:
        out = run_dir / "eval" / name
        run_stage(
            log,
            f"eval-{name}",
            lambda: _summary_done(out),
            lambda: _eval_gsm8k(cfg, out, holder, sc=False, progress=progress),
            progress=progress,
        )
        if cfg.eval.self_consistency:
            out_sc = run_dir / "eval" / f"{name}-sc"
            run_stage(
                log,
                f"eval-{name}-sc",
                lambda: _summary_done(out_sc),
                lambda: _eval_gsm8k(cfg, out_sc, holder, sc=True, progress=progress),
                progress=progress,
            )
        for task in other_tasks(cfg):
            out_t = run_dir / "eval" / f"{name}-{task}"
            run_stage(
                log,
                f"eval-{name}-{task}",
                lambda o=out_t: _summary_done(o),
                lambda t=task, o=out_t: _eval_task(cfg, t, o, holder, progress=progress),
                progress=progress,
            )
    finally:
        holder.release()


def other_tasks(cfg: RunConfig) -> list[str]:
    """cfg.eval.tasks without gsm8k (always evaluated), validated before any work starts."""
    from mathtune.errors import UserError
    from mathtune.tasks import TASKS

    out = []
    for t in cfg.eval.tasks:
        if t == "gsm8k":
            continue
        if t not in TASKS:
            raise UserError(f"eval.tasks: unknown task '{t}' (known: gsm8k, {', '.join(TASKS)})")
        if t not in out:
            out.append(t)
    if isinstance(cfg.eval.task_limit, dict):
        stray = sorted(set(cfg.eval.task_limit) - set(out))
        if stray:
            raise UserError(f"eval.task_limit: '{stray[0]}' is not in eval.tasks ({', '.join(out) or 'none'})")
    return out


@holds_dir_lock("run_dir")
def run_pipeline(cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Run every stage into `run_dir` (resuming from its artifacts) and return the report.html path."""
    from mathtune.rundir import prepare_run_dir

    run_dir = Path(run_dir)
    other_tasks(cfg)  # a typo in eval.tasks fails now, not after training
    # resume=True unless overwriting: a rerun continues; a different config is refused by name.
    prepare_run_dir(run_dir, cfg, overwrite=overwrite, resume=not overwrite, stage="run")
    log = StageLog(run_dir)
    try:
        _eval_phase(cfg, run_dir, log, "base", None, progress)

        def _train() -> Any:
            from mathtune.train import train

            return train(cfg, run_dir, resume=True, overwrite=False, progress=progress)

        run_stage(log, "train", lambda: (run_dir / "train_summary.json").is_file(), _train, progress=progress)
        _eval_phase(cfg, run_dir, log, "tuned", run_dir / "adapter", progress)

        from mathtune.evaluate import compare_summaries

        # Same items, prompt and decoding for base and tuned, or the comparison means nothing.
        compare_summaries(
            read_json(run_dir / "eval" / "base" / "summary.json"),
            read_json(run_dir / "eval" / "tuned" / "summary.json"),
        )

        from mathtune.report.build import build_report

        paths = run_stage(log, "report", lambda: False, lambda: build_report(run_dir), progress=progress)
    except KeyboardInterrupt:
        log.finish("interrupted")
        raise
    except BaseException:
        log.finish("failed")
        raise
    log.finish("finished")
    # The report was rendered while stages.json said "running"; render once more so its stage
    # table shows the report stage's own time (cheap: artifacts only).
    paths = build_report(run_dir)
    return paths[1]


def summary_rows(run_dir: str | Path) -> list[tuple[str, str]]:
    """(label, value) lines for the end-of-run table, read back from the artifacts."""
    from mathtune.report.build import acc_ci, load_artifacts, paired, pval

    a = load_artifacts(run_dir)
    rows: list[tuple[str, str]] = []
    h = a.cfg.eval.headline
    for name in ("base", "tuned"):
        e = a.evals.get(name)
        rows.append((f"GSM8K {h} ({name})", acc_ci((e.summary.get("accuracy") or {}).get(h)) if e else "not run"))
    if "base" in a.evals and "tuned" in a.evals:
        pc = paired(a.evals["base"].records, a.evals["tuned"].records, f"correct_{h}")
        if pc:
            rows.append(("paired (fixed / broken)", f"{pc['fixed']} / {pc['broken']}, McNemar {pval(pc['p'])}"))
    for tag, e in a.evals.items():
        if tag.endswith("-sc") and (e.summary.get("self_consistency") or {}).get("maj_at_k"):
            sc = e.summary["self_consistency"]
            rows.append((f"maj@{sc.get('k')} ({tag[:-3]})", acc_ci(sc["maj_at_k"])))
        elif "-" in tag and not tag.endswith("-sc"):
            s = e.summary
            metric = s.get("headline") or "acc"
            val = (s.get("accuracy") or {}).get(metric) if isinstance(s.get("accuracy"), dict) else None
            if val is None and isinstance(s.get("after"), dict):
                metric, val = "after", s["after"]
            rows.append((f"{tag.split('-', 1)[1]} {metric} ({tag.split('-', 1)[0]})", acc_ci(val)))
    ts = a.train_summary or {}
    if ts:
        best = ts.get("best_eval_loss")
        best_txt = f"{best:.4f}" if isinstance(best, int | float) else "n/a"
        rows.append(
            (
                "training",
                f"{ts.get('global_step')} steps, best validation loss {best_txt}"
                + (" (early stopped)" if ts.get("early_stopped") else ""),
            )
        )
    return rows


def print_summary(run_dir: str | Path, report: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mathtune run: {Path(run_dir)}", show_header=True)
    table.add_column("result")
    table.add_column("value")
    for k, v in summary_rows(run_dir):
        table.add_row(k, v)
    console = Console()
    console.print(table)
    console.print(f"report: {report}", markup=False, highlight=False)
    console.print(f"report (markdown): {Path(report).with_suffix('.md')}", markup=False, highlight=False)
