"""Trainer callbacks: the metrics.jsonl writer and an early-stopping callback that remembers firing.

metrics.jsonl follows docs/artifacts.md. The Trainer's own log dicts are translated here, so the
file's schema does not change when transformers/TRL rename their keys.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from mathtune.io import JsonlAppender, atomic_write_json, read_json

STATE_NAME = "mathtune_state.json"  # written into each checkpoint: counters the Trainer does not keep

TRAIN_KEYS = ("loss", "learning_rate", "grad_norm", "mean_token_accuracy")
EVAL_KEYS = ("eval_loss", "eval_mean_token_accuracy")


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class MetricsLogger(TrainerCallback):
    """Writes one `train` line per logging step and one `eval` line per evaluation.

    `elapsed_s` and `num_tokens` continue across a resume: their values at the checkpoint are
    stored in the checkpoint (STATE_NAME) and passed back as offsets.
    """

    def __init__(self, path: Path, *, elapsed_offset: float = 0.0, tokens_offset: int = 0, eval_offset: float = 0.0):
        self.path = Path(path)
        self.elapsed_offset = elapsed_offset
        self.eval_seconds = eval_offset
        self.tokens_offset = tokens_offset
        self.trainer: Any = None  # set after the trainer exists; its token counter is read from it
        self._t0: float | None = None
        self._writer: JsonlAppender | None = None
        self.last_num_tokens = tokens_offset

    # -- counters -------------------------------------------------------------------------------
    def elapsed(self) -> float:
        if self._t0 is None:
            return self.elapsed_offset
        return self.elapsed_offset + (time.perf_counter() - self._t0)

    def num_tokens(self) -> int:
        # TRL counts non-padding tokens (attention_mask sum) since this process started training.
        seen = int(getattr(self.trainer, "_total_train_tokens", 0) or 0)
        return self.tokens_offset + seen

    def time_evaluations(self, trainer: Any) -> None:
        """Count the wall time of validation passes, so throughput can exclude them."""
        evaluate = trainer.evaluate

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return evaluate(*args, **kwargs)
            finally:
                self.eval_seconds += time.perf_counter() - t

        trainer.evaluate = timed

    # -- hooks ----------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()
        if self._writer is None:
            self._writer = JsonlAppender(self.path)

    def on_step_end(self, args, state, control, **kwargs):
        # Log the last step even when it is not a multiple of logging_steps, so the curve reaches the end.
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or self._writer is None:
            return
        epoch = round(float(state.epoch or 0.0), 4)
        if "eval_loss" in logs:
            row = {"kind": "eval", "step": state.global_step, "epoch": epoch}
            row.update({k: _num(logs.get(k)) for k in EVAL_KEYS})
        elif "loss" in logs:
            row = {"kind": "train", "step": state.global_step, "epoch": epoch}
            row.update({k: _num(logs.get(k)) for k in TRAIN_KEYS})
            self.last_num_tokens = self.num_tokens()
            row["num_tokens"] = self.last_num_tokens
        else:
            return  # the end-of-training summary (train_runtime, ...) goes to train_summary.json
        row["elapsed_s"] = round(self.elapsed(), 3)
        self._writer.write(row)

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            atomic_write_json(
                ckpt / STATE_NAME,
                {
                    "step": state.global_step,
                    "elapsed_s": self.elapsed(),
                    "eval_s": self.eval_seconds,
                    "num_tokens": self.num_tokens(),
                },
            )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_checkpoint_state(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / STATE_NAME
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except Exception:  # a damaged side file only costs the offsets, not the resume
        return {}
    return data if isinstance(data, dict) else {}


class CompactProgress(ProgressCallback):
    """The Trainer's tqdm bar, with the latest losses as its postfix instead of a printed dict per log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or self.training_bar is None:
            return
        shown = {k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "eval_loss") and isinstance(v, float)}
        if shown:
            self._postfix = {**getattr(self, "_postfix", {}), **shown}
            self.training_bar.set_postfix(self._postfix, refresh=False)


class StartEvalRngGuard(TrainerCallback):
    """Makes the step-0 evaluation invisible to the random streams training uses.

    The evaluation before the first update consumes random numbers (measured: with it, step-1
    grad_norm differed from a run without it), so the RNG states are saved when training begins
    and put back once that evaluation is done: a run with the step-0 line trains exactly like one
    without it.
    """

    def __init__(self) -> None:
        self._saved: dict[str, Any] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        import random

        import numpy as np
        import torch

        self._saved = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_evaluate(self, args, state, control, **kwargs):
        if self._saved is None or state.global_step != 0:
            return
        import random

        import numpy as np
        import torch

        random.setstate(self._saved["python"])
        np.random.set_state(self._saved["numpy"])
        torch.set_rng_state(self._saved["torch"])
        if self._saved["cuda"] is not None:
            torch.cuda.set_rng_state_all(self._saved["cuda"])
        self._saved = None


class RecordingEarlyStopping(EarlyStoppingCallback):
    """EarlyStoppingCallback that records the step at which it stopped training.

    Its state (patience counter, firing step) is saved in checkpoints and restored on resume; the
    Trainer rebuilds it from `state()`, so the constructor keeps the parent's argument names.
    """

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float | None = 0.0):
        super().__init__(early_stopping_patience, early_stopping_threshold)
        self.fired_at: int | None = None

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if control.should_training_stop and self.fired_at is None and state.global_step < state.max_steps:
            self.fired_at = state.global_step

    def state(self) -> dict:
        out = super().state()
        out["attributes"]["fired_at"] = self.fired_at
        return out
