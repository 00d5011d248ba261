"""`train()`: LoRA supervised fine-tuning with TRL's SFTTrainer, writing the run-directory artifacts.

The call site stays thin (as in TRL's `scripts/sft.py`): resolve settings, load the model through
mathtune.models, build the datasets, hand everything to SFTTrainer, and record what happened.
Everything mathtune adds is a callback (metrics.jsonl, early-stopping record) or happens before
and after `trainer.train()` (run-dir guard, resumable checkpoint, train_summary.json).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathtune.config import RunConfig
from mathtune.errors import UserError
from mathtune.io import atomic_write_json, atomic_write_text, dumps, iter_jsonl, read_json
from mathtune.locks import holds_dir_lock
from mathtune.rundir import is_finished, prepare_run_dir
from mathtune.train.callbacks import (
    CompactProgress,
    MetricsLogger,
    RecordingEarlyStopping,
    StartEvalRngGuard,
    read_checkpoint_state,
)
from mathtune.train.checkpoints import (
    CHECKPOINTS_DIR,
    checkpoint_step,
    find_resumable_checkpoint,
    list_checkpoints,
    set_aside,
)
from mathtune.train.dataset import select_problems, to_dataset, write_data_split
from mathtune.train.speed import Tuning, compact_lm_head

METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "train_summary.json"
ADAPTER_DIR = "adapter"

# report_to value -> the package that provides it
_TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


@dataclass(frozen=True)
class Precision:
    label: str  # recorded in train_summary.json: "bf16-autocast", "bf16", "fp16", "fp32"
    bf16: bool
    fp16: bool
    use_cpu: bool


def resolve_precision(requested: str, device: str) -> Precision:
    """Mixed precision for the Trainer. On CPU, bf16 means autocast over fp32 master weights."""
    import torch

    from mathtune.models import cpu_supports_bf16

    on_cpu = not device.startswith("cuda")
    if requested == "auto":
        if on_cpu:
            requested = "bf16" if cpu_supports_bf16() else "fp32"
        else:
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and on_cpu:
        raise UserError("train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    if requested == "bf16" and not on_cpu and not torch.cuda.is_bf16_supported():
        raise UserError("train.precision: this GPU has no bf16 support; use fp16 or fp32")
    label = {"bf16": "bf16-autocast" if on_cpu else "bf16", "fp16": "fp16", "fp32": "fp32"}[requested]
    return Precision(label, requested == "bf16", requested == "fp16", on_cpu)


def check_report_to(report_to: list[str]) -> list[str]:
    for name in report_to:
        if importlib.util.find_spec(_TRACKERS[name]) is None:
            raise UserError(f"train.report_to: '{name}' is requested but not installed (pip install {name})")
    return list(report_to)


def check_intervals(cfg: RunConfig) -> None:
    t = cfg.train
    # The best adapter is chosen among saved checkpoints, so every save must coincide with an evaluation.
    if t.save_steps % t.eval_steps != 0:
        raise UserError(
            f"train.save_steps ({t.save_steps}) must be a multiple of train.eval_steps ({t.eval_steps}): "
            "the best adapter is picked among checkpoints by validation loss"
        )


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def _lora_config(cfg: RunConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        bias=cfg.lora.bias,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def _sft_config(cfg: RunConfig, run_dir: Path, prec: Precision, tuning: Tuning, *, progress: bool, eval_on_start: bool):
    from trl import SFTConfig

    t = cfg.train
    return SFTConfig(
        output_dir=str(run_dir / CHECKPOINTS_DIR),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        activation_checkpointing=t.gradient_checkpointing,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        eval_on_start=eval_on_start,  # the step-0 validation line, measured before any update
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        restore_callback_states_from_checkpoint=True,
        bf16=prec.bf16,
        fp16=prec.fp16,
        use_cpu=prec.use_cpu,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=check_report_to(t.report_to) or "none",
        disable_tqdm=not progress,
        max_length=cfg.data.max_seq_length,
        completion_only_loss=cfg.data.completion_only_loss,
        packing=t.packing,
        use_liger_kernel=t.use_liger_kernel,
        dataloader_num_workers=0,
        # Batches of similar lengths: less padding computed and thrown away (bench/train.py).
        train_sampling_strategy="group_by_length" if tuning.group_by_length else "random",
    )


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics lines up to the checkpoint being resumed; later steps will be re-logged."""
    if not path.exists():
        return
    kept = [obj for obj in iter_jsonl(path) if int(obj.get("step", 0)) <= step]
    atomic_write_text(path, "".join(dumps(o) + "\n" for o in kept))


def _resume_point(run_dir: Path) -> Path | None:
    """The newest loadable checkpoint; damaged newer ones are renamed out of the Trainer's way."""
    ckpt = find_resumable_checkpoint(run_dir)
    newest = list_checkpoints(run_dir)
    for step, path in newest:
        if ckpt is None or step > checkpoint_step(ckpt):
            moved = set_aside(path)
            print(f"mathtune: set aside damaged checkpoint as {moved.name}", file=sys.stderr)
    return ckpt


def _stateful(state: dict[str, Any], name: str) -> dict[str, Any]:
    entry = (state.get("stateful_callbacks") or {}).get(name) or {}
    return (entry[0] if entry else {}) if isinstance(entry, list) else entry


def _training_had_ended(ckpt: Path) -> bool:
    """True when `ckpt` was saved at the end of training: max_steps reached or early stopping fired."""
    state = read_json(ckpt / "trainer_state.json")
    stopped = bool((_stateful(state, "TrainerControl").get("args") or {}).get("should_training_stop"))
    max_steps = int(state.get("max_steps") or 0)
    return stopped or (max_steps > 0 and int(state.get("global_step") or 0) >= max_steps)


def _finish_from_checkpoint(trainer, run_dir: Path, ckpt: Path) -> None:
    """What the end of `trainer.train()` does, from a checkpoint saved when training had ended: restore
    the Trainer's state and the early-stopping record, and load the best checkpoint's adapter."""
    from transformers import TrainerState

    raw = read_json(ckpt / "trainer_state.json")
    state = TrainerState.load_from_json(str(ckpt / "trainer_state.json"))
    best = run_dir / CHECKPOINTS_DIR / f"checkpoint-{state.best_global_step}" if state.best_global_step else None
    if best is None or not best.is_dir():
        best = ckpt
    # The stored path is absolute: after the run directory moved it points nowhere, so use this directory's.
    state.best_model_checkpoint = str(best)
    trainer.state = state
    model = trainer.model
    model.load_adapter(str(best), model.active_adapters[0])  # as Trainer._load_best_model does for PEFT
    record = _stateful(raw, "RecordingEarlyStopping").get("attributes") or {}
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, RecordingEarlyStopping):
            cb.fired_at = record.get("fired_at")


def _quiet_console(trainer, progress: bool) -> None:
    """One progress bar (or nothing); the losses go to metrics.jsonl, not a dict printed per log."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(CompactProgress())


def _param_counts(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


@holds_dir_lock("run_dir")
def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    tuning: Tuning | None = None,
) -> dict[str, Any]:
    """LoRA-fine-tune `cfg.model.spec` on GSM8K train; write the run-dir artifacts; return the summary.

    `resume=True` continues from the newest loadable checkpoint (a finished run is returned as is);
    `overwrite=True` removes the previous training artifacts first. `tuning` overrides the speed
    defaults (see mathtune.train.speed; used by bench/train.py to measure them).
    """
    run_dir = Path(run_dir)
    check_report_to(cfg.train.report_to)
    check_intervals(cfg)
    if resume and is_finished(run_dir, "train"):
        prepare_run_dir(run_dir, cfg, overwrite=False, resume=True, stage="train")  # same-config check
        print(f"mathtune: {run_dir} already holds a finished training run; nothing to resume", file=sys.stderr)
        return read_json(run_dir / SUMMARY_NAME)
    prepare_run_dir(run_dir, cfg, overwrite=overwrite, resume=resume, stage="train")

    import datasets

    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        return _train(cfg, run_dir, resume=resume, progress=progress, tuning=tuning or Tuning())
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _train(cfg: RunConfig, run_dir: Path, *, resume: bool, progress: bool, tuning: Tuning) -> dict[str, Any]:
    import torch

    from mathtune.models import default_device, load_model

    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = default_device()
    prec = resolve_precision(cfg.train.precision, device)
    tuning = tuning.resolved(device)

    ckpt = _resume_point(run_dir) if resume else None
    metrics_path = run_dir / METRICS_NAME
    offsets: dict[str, Any] = {}
    if ckpt is not None:
        step = checkpoint_step(ckpt)
        _truncate_metrics(metrics_path, step)
        offsets = read_checkpoint_state(ckpt)
        print(f"mathtune: resuming from {ckpt} (step {step})", file=sys.stderr)
    else:
        if resume and (metrics_path.exists() or list_checkpoints(run_dir)):
            print(f"mathtune: no resumable checkpoint in {run_dir}; starting from step 0", file=sys.stderr)
        # A fresh start: old lines would mix two runs in one curve.
        metrics_path.unlink(missing_ok=True)

    model, tok, resolved = load_model(
        cfg.model.spec,
        dtype=cfg.model.dtype,
        device=device,
        trust_remote_code=cfg.model.trust_remote_code,
        revision=cfg.model.revision,
    )
    data = select_problems(cfg, tok)
    write_data_split(run_dir, data, cfg)
    strip = cfg.data.strip_calculator_annotations
    train_ds = to_dataset(data.train, data.fmt, strip_annotations=strip)
    val_ds = to_dataset(data.val, data.fmt, strip_annotations=strip)

    from transformers import set_seed
    from trl import SFTTrainer

    # Seed before SFTTrainer wraps the model in PEFT: the LoRA A matrices are drawn there, before the
    # Trainer's own set_seed runs.
    set_seed(cfg.seed)

    logger = MetricsLogger(
        metrics_path,
        elapsed_offset=float(offsets.get("elapsed_s") or 0.0),
        eval_offset=float(offsets.get("eval_s") or 0.0),
        tokens_offset=int(offsets.get("num_tokens") or 0),
    )
    callbacks: list[Any] = [logger, StartEvalRngGuard()]
    if cfg.train.early_stopping_patience is not None:
        callbacks.append(RecordingEarlyStopping(cfg.train.early_stopping_patience))
    args = _sft_config(cfg, run_dir, prec, tuning, progress=progress, eval_on_start=ckpt is None)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tok,
        peft_config=_lora_config(cfg),
        callbacks=callbacks,
    )
    logger.trainer = trainer
    logger.time_evaluations(trainer)
    _quiet_console(trainer, progress)
    trainable, total = _param_counts(trainer.model)

    t0 = time.perf_counter()
    try:
        if ckpt is not None and _training_had_ended(ckpt):
            # Killed after the last checkpoint, before the adapter/summary were written. transformers'
            # loop would run one more step before it checks for the end (measured: step 13 of 12, and
            # steps past an early stop), so only the end of training is redone.
            _finish_from_checkpoint(trainer, run_dir, ckpt)
        else:
            with compact_lm_head(bool(tuning.compact_lm_head)):
                trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    finally:
        logger.close()
    train_seconds = logger.elapsed()
    step_seconds = train_seconds - logger.eval_seconds

    adapter_dir = run_dir / ADAPTER_DIR
    trainer.save_model(str(adapter_dir))  # the best checkpoint's weights, loaded at the end
    tok.save_pretrained(str(adapter_dir))

    state = trainer.state
    stopper = next((c for c in trainer.callback_handler.callbacks if isinstance(c, RecordingEarlyStopping)), None)
    best_ckpt = state.best_model_checkpoint
    tokens = logger.num_tokens()
    summary = {
        "status": "finished",
        "global_step": state.global_step,
        "epochs_done": round(float(state.epoch or 0.0), 4),
        "max_steps": state.max_steps,
        "early_stopped": bool(stopper is not None and stopper.fired_at is not None),
        "early_stopped_at": stopper.fired_at if stopper is not None else None,
        "best_step": state.best_global_step,
        "best_eval_loss": state.best_metric,
        "best_checkpoint": os.path.relpath(best_ckpt, run_dir) if best_ckpt else None,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "tokens_trained": tokens,
        "train_seconds": round(train_seconds, 3),  # wall time of training, evaluations included
        "eval_seconds": round(logger.eval_seconds, 3),
        # throughput of the training steps alone: validation passes are excluded
        "tokens_per_second": round(tokens / step_seconds, 2) if step_seconds > 0 else None,
        "this_session_seconds": round(time.perf_counter() - t0, 3),
        "device": device,
        "device_name": device_name(device),
        "precision": prec.label,
        "trainable_params": trainable,
        "total_params": total,
        "model": resolved.display_name,
        "prompt_format": data.fmt,
        "resumed_from": os.path.relpath(ckpt, run_dir) if ckpt is not None else None,
    }
    atomic_write_json(run_dir / SUMMARY_NAME, summary)
    return summary
