"""Fault-injection helpers: the real `mathtune` CLI in a subprocess, paused at a chosen point and SIGKILLed.

A kill at a random moment would make CI flaky (the tiny model trains 12 steps in about a second),
so the child process is told, through environment variables, where to stop: it writes a marker
file there and sleeps until the test kills it with SIGKILL. Nothing else about the run is changed;
the kill itself is a real SIGKILL of a real `mathtune` process (no cleanup handler can run).

The runs every fault test compares against (an uninterrupted training run, a run killed mid-epoch,
an uninterrupted evaluation, ...) are started together once per session: they are independent,
each uses one thread, and two cores run two of them at once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import make_problem

from mathtune.io import read_jsonl

REPO = Path(__file__).resolve().parents[2]

# Runs inside the child: optional pause points, then the ordinary CLI entry point.
LAUNCHER = r"""
import os, sys, time
from pathlib import Path

def _pause():
    # Marker first, so the parent knows the child reached the point; then wait to be killed.
    Path(os.environ["MATHTUNE_FAULT_MARKER"]).write_text(str(os.getpid()))
    while True:
        time.sleep(60)

step = os.environ.get("MATHTUNE_FAULT_PAUSE_AT_STEP")
if step:
    from mathtune.train.callbacks import MetricsLogger
    _orig_step_end = MetricsLogger.on_step_end
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == int(step):
            _pause()
        return _orig_step_end(self, args, state, control, **kw)
    MetricsLogger.on_step_end = on_step_end

records = os.environ.get("MATHTUNE_FAULT_PAUSE_AFTER_RECORDS")
if records:
    import mathtune.evaluate as ev
    _orig_make_record, _calls = ev.make_record, []
    def make_record(*a, **k):
        _calls.append(1)
        if len(_calls) > int(records):
            _pause()
        return _orig_make_record(*a, **k)
    ev.make_record = make_record

from mathtune.cli import main
main(sys.argv[1:])
"""

# One thread per child: identical arithmetic in every run, and two runs fit the two cores.
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PYTHONHASHSEED": "random",  # determinism must not rest on a fixed hash seed
}

# The training run every kill/resume test uses: 18 train records, batch 2 -> 9 steps per epoch,
# 12 steps in all; a checkpoint every 2 steps; LoRA dropout on (so the RNG state matters).
MAX_STEPS = 12
KILL_STEP = 7  # paused at the end of step 7 (epoch 0 of 2): checkpoints 2, 4, 6 exist
TRAIN_SETS = [
    "data.val_fraction=0.25",
    "data.max_seq_length=96",
    "train.batch_size=2",
    "train.eval_batch_size=6",
    f"train.max_steps={MAX_STEPS}",
    "train.eval_steps=2",
    "train.save_steps=2",
    "train.save_total_limit=3",
    "train.logging_steps=1",
    "train.precision=fp32",
    "train.learning_rate=0.01",
    "train.num_threads=1",
    "lora.dropout=0.1",
]
EVAL_LIMIT = 8
EVAL_KILL_AFTER = 3  # records written before the kill


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    sets = [f"model.spec={model}", f"data.path={data}", *TRAIN_SETS]
    return ["train", "--output", str(out), "--quiet", *[a for s in sets for a in ("--set", s)], *extra]


def eval_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval", "--model", str(model), "--data", str(data), "--limit", str(EVAL_LIMIT), "--batch-size", "2",
        "--max-new-tokens", "16", "--output", str(out), "--quiet", *extra,
    ]  # fmt: skip


@dataclass
class Child:
    proc: subprocess.Popen
    marker: Path | None
    log: Path

    def wait_paused(self, timeout: float = 240) -> None:
        """Block until the child reached its pause point (marker written); fail if it exited first."""
        deadline = time.monotonic() + timeout
        while not (self.marker and self.marker.exists()):
            if self.proc.poll() is not None:
                raise AssertionError(f"child exited ({self.proc.returncode}) before its pause point:\n{self.output()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("child never reached its pause point")
            time.sleep(0.05)

    def sigkill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def finish(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_cli(
    args: list[str],
    logdir: Path,
    *,
    pause_at_step: int | None = None,
    pause_after_records: int | None = None,
    name: str = "child",
) -> Child:
    """Start `mathtune <args>` (the package's own CLI entry point) in a new process."""
    env = {**os.environ, **CHILD_ENV}
    marker = None
    if pause_at_step is not None or pause_after_records is not None:
        marker = logdir / f"{name}.paused"
        env["MATHTUNE_FAULT_MARKER"] = str(marker)
        if pause_at_step is not None:
            env["MATHTUNE_FAULT_PAUSE_AT_STEP"] = str(pause_at_step)
        if pause_after_records is not None:
            env["MATHTUNE_FAULT_PAUSE_AFTER_RECORDS"] = str(pause_after_records)
    log = logdir / f"{name}.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], cwd=REPO, env=env, stdout=f, stderr=f)
    return Child(proc, marker, log)


def run_cli(args: list[str], logdir: Path, name: str, timeout: float = 300) -> tuple[int, str]:
    child = start_cli(args, logdir, name=name)
    rc = child.finish(timeout)
    return rc, child.output()


def main_rc(args: list[str]) -> int:
    """`mathtune <args>` in this process (cheap: no new interpreter); returns the exit code."""
    from mathtune.cli import main

    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


# ---- comparisons -----------------------------------------------------------------------------


WALL_CLOCK = {"elapsed_s", "seconds", "generation_seconds", "tokens_per_second"}


def metric_keys(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(r["kind"], r["step"]) for r in rows]


def without(obj: Any, keys: set[str]) -> Any:
    """`obj` with the named keys removed at every depth."""
    if isinstance(obj, dict):
        return {k: without(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [without(v, keys) for v in obj]
    return obj


def assert_metrics_match(got: list[dict[str, Any]], ref: list[dict[str, Any]], rel: float = 1e-4) -> None:
    """Same lines in the same order; integers equal; floats within `rel`; wall clock ignored."""
    assert metric_keys(got) == metric_keys(ref)
    for g, r in zip(got, ref, strict=True):
        assert set(g) == set(r), (g, r)
        for k, v in r.items():
            if k in WALL_CLOCK or k == "kind":
                continue
            if isinstance(v, float):
                assert g[k] == pytest.approx(v, rel=rel, abs=1e-7), (g["kind"], g["step"], k, g[k], v)
            else:
                assert g[k] == v, (g["kind"], g["step"], k, g[k], v)


def adapter_logits(model_dir: Path, adapter: Path | None):
    """Logits of base+adapter (or the base alone) on a fixed input (a GSM8K-style question), fp32 on CPU."""
    import torch

    from mathtune.models import load_model

    model, tok, _ = load_model(str(model_dir), dtype="fp32", device="cpu", adapter=adapter)
    ids = tok(make_problem(7)["question"] + " The answer is", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits.float()


# ---- shared runs ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fault_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same hand-made GSM8K directory as the `gsm8k_dir` fixture, but session-scoped."""
    d = tmp_path_factory.mktemp("fault-gsm8k")
    (d / "train.jsonl").write_text("".join(json.dumps(make_problem(i)) + "\n" for i in range(24)))
    (d / "test.jsonl").write_text("".join(json.dumps(make_problem(100 + i)) + "\n" for i in range(8)))
    return d


@dataclass
class Runs:
    root: Path
    train_ref: Path  # uninterrupted training run
    train_ref2: Path  # a second uninterrupted run, same seed (determinism)
    train_killed: Path  # SIGKILLed at the end of step KILL_STEP; never touched again (tests copy it)
    train_resumed: Path  # a copy of train_killed, then `mathtune train --resume`
    eval_ref: Path
    eval_ref2: Path
    eval_killed: Path  # SIGKILLed after EVAL_KILL_AFTER records; never touched again (tests copy it)
    eval_resumed: Path  # a copy of eval_killed, then the same `mathtune eval` command again
    logs: dict[str, str]  # combined stdout+stderr of each finished child, by name


def run_pool(jobs: list[tuple[str, list[str]]], root: Path, slots: int = 2) -> dict[str, str]:
    """Run CLI jobs, `slots` at a time; every one must exit 0. Returns their output by name."""
    pending, running, logs = list(jobs), [], {}
    while pending or running:
        while pending and len(running) < slots:
            name, args = pending.pop(0)
            running.append((name, start_cli(args, root, name=name)))
        time.sleep(0.1)
        for item in list(running):
            name, child = item
            if child.proc.poll() is not None:
                running.remove(item)
                logs[name] = child.output()
                assert child.proc.returncode == 0, f"{name} failed:\n{logs[name]}"
    return logs


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, fault_data: Path) -> Runs:
    root = tmp_path_factory.mktemp("fault-runs")
    names = ("train-ref", "train-ref2", "train-killed", "train-resumed", "eval-ref", "eval-ref2", "eval-killed",
             "eval-resumed")  # fmt: skip
    r = Runs(root, *(root / n for n in names), logs={})
    m, d = tiny_model_dir, fault_data
    killed_t = start_cli(train_args(m, d, r.train_killed), root, pause_at_step=KILL_STEP, name="train-killed")
    killed_e = start_cli(eval_args(m, d, r.eval_killed), root, pause_after_records=EVAL_KILL_AFTER,
                         name="eval-killed")  # fmt: skip
    for child in (killed_t, killed_e):
        child.wait_paused()
        child.sigkill()
    shutil.copytree(r.train_killed, r.train_resumed)
    shutil.copytree(r.eval_killed, r.eval_resumed)
    r.logs.update(run_pool([
        ("train-resumed", train_args(m, d, r.train_resumed, "--resume")),
        ("eval-resumed", eval_args(m, d, r.eval_resumed)),
        ("train-ref", train_args(m, d, r.train_ref)),
        ("eval-ref", eval_args(m, d, r.eval_ref)),
        ("train-ref2", train_args(m, d, r.train_ref2)),
        ("eval-ref2", eval_args(m, d, r.eval_ref2)),
    ], root))  # fmt: skip
    return r


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / "metrics.jsonl")


@pytest.fixture(autouse=True)
def one_thread():
    """In-process work uses one thread too, so its arithmetic matches the children's exactly."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
