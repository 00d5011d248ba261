"""Damaged checkpoints: detected with a message naming the file, and `--resume` falls back to a good one.

A kill during `save` or a full disk can leave the newest checkpoint with a file cut short. The
killed run of tests/faults/conftest.py (checkpoints 2, 4, 6; killed at step 7) is copied and
damaged here; because every checkpoint carries the full optimizer and RNG state, resuming from an
older good checkpoint must still end exactly where the uninterrupted run ended.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from faults.conftest import (
    MAX_STEPS,
    adapter_logits,
    assert_metrics_match,
    main_rc,
    metric_keys,
    read_metrics,
    train_args,
)
from mathtune.io import read_json
from mathtune.train.checkpoints import checkpoint_problem, find_resumable_checkpoint

CHECKPOINT_FILES = ["adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                    "trainer_state.json", "mathtune_state.json", "adapter_config.json"]  # fmt: skip


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def killed_copy(runs, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(runs.train_killed, run)
    return run


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_file_cut_in_half_is_detected_and_named(killed_copy, name, capsys):
    ckpt = killed_copy / "checkpoints" / "checkpoint-6"
    assert checkpoint_problem(ckpt) is None
    cut_in_half(ckpt / name)
    problem = checkpoint_problem(ckpt)
    assert problem is not None and problem.startswith(f"{name}: "), problem
    assert find_resumable_checkpoint(killed_copy).name == "checkpoint-4"
    err = capsys.readouterr().err
    assert f"checkpoint-6 is damaged ({name}: " in err and "trying the previous one" in err


@pytest.mark.parametrize(
    "name", ["trainer_state.json", "optimizer.pt", "adapter_model.safetensors", "mathtune_state.json"]
)
def test_a_missing_file_is_detected(killed_copy, name):
    # A kill before the Trainer wrote its last files leaves the directory incomplete.
    ckpt = killed_copy / "checkpoints" / "checkpoint-6"
    (ckpt / name).unlink()
    assert checkpoint_problem(ckpt) == f"{name} is missing"


def test_an_empty_file_is_detected(killed_copy):
    # What a crash right after open(..., "w") leaves behind.
    ckpt = killed_copy / "checkpoints" / "checkpoint-6"
    (ckpt / "scheduler.pt").write_bytes(b"")
    assert checkpoint_problem(ckpt).startswith("scheduler.pt: unreadable")


def test_resume_skips_damaged_checkpoints_and_still_matches_the_uninterrupted_run(
    runs, killed_copy, tiny_model_dir, fault_data, capsys
):
    run = killed_copy
    cut_in_half(run / "checkpoints" / "checkpoint-6" / "adapter_model.safetensors")
    cut_in_half(run / "checkpoints" / "checkpoint-4" / "optimizer.pt")
    # ... and the kill also tore the last metrics line in the middle of a write.
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"kind": "train", "step": 7, "epoch": 0.77, "lo')

    assert main_rc(train_args(tiny_model_dir, fault_data, run, "--resume")) == 0
    err = capsys.readouterr().err
    assert "checkpoint-6 is damaged (adapter_model.safetensors: unreadable" in err
    assert "checkpoint-4 is damaged (optimizer.pt: " in err
    assert "resuming from" in err and "checkpoint-2 (step 2)" in err
    # Damaged checkpoints are kept under another name (nothing on disk is deleted), out of the Trainer's way.
    assert (run / "checkpoints" / "damaged-checkpoint-6").is_dir()
    assert (run / "checkpoints" / "damaged-checkpoint-4").is_dir()

    got, ref = read_metrics(run), read_metrics(runs.train_ref)
    assert len(set(metric_keys(got))) == len(got)
    assert [s for k, s in metric_keys(got) if k == "train"] == list(range(1, MAX_STEPS + 1))
    assert_metrics_match(got, ref)
    assert read_json(run / "train_summary.json")["resumed_from"] == "checkpoints/checkpoint-2"
    torch.testing.assert_close(
        adapter_logits(tiny_model_dir, run / "adapter"), adapter_logits(tiny_model_dir, runs.train_ref / "adapter"),
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip


def test_no_good_checkpoint_starts_over_and_says_so(runs, killed_copy, tiny_model_dir, fault_data, capsys):
    run = killed_copy
    for step in (2, 4, 6):
        cut_in_half(run / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json")
    assert main_rc(train_args(tiny_model_dir, fault_data, run, "--resume")) == 0
    err = capsys.readouterr().err
    assert "no resumable checkpoint" in err and "starting from step 0" in err
    # A fresh start: the old lines are not mixed into the new curve.
    assert_metrics_match(read_metrics(run), read_metrics(runs.train_ref))
    assert read_json(run / "train_summary.json")["resumed_from"] is None


def test_kill_after_the_last_checkpoint_while_saving_the_adapter(runs, tiny_model_dir, fault_data, tmp_path, capsys):
    # The last window of a run: checkpoint-12 is complete, adapter/ half written, no train_summary.json.
    # The run directory was also moved before the resume: the absolute best-checkpoint path the
    # Trainer stored in trainer_state.json points to a directory that no longer exists.
    run = tmp_path / "run"
    shutil.copytree(runs.train_ref, run)
    (run / "train_summary.json").unlink()
    cut_in_half(run / "adapter" / "adapter_model.safetensors")
    for state in (run / "checkpoints").glob("checkpoint-*/trainer_state.json"):
        data = json.loads(state.read_text())
        data["best_model_checkpoint"] = str(tmp_path / "moved-away" / Path(data["best_model_checkpoint"]).name)
        state.write_text(json.dumps(data))
    assert main_rc(train_args(tiny_model_dir, fault_data, run, "--resume")) == 0
    assert "checkpoint-12 (step 12)" in capsys.readouterr().err
    s_got, s_ref = read_json(run / "train_summary.json"), read_json(runs.train_ref / "train_summary.json")
    for key in ("status", "global_step", "best_step", "best_eval_loss", "best_checkpoint", "tokens_trained"):
        assert s_got[key] == s_ref[key], key
    assert_metrics_match(read_metrics(run), read_metrics(runs.train_ref))
    torch.testing.assert_close(
        adapter_logits(tiny_model_dir, run / "adapter"), adapter_logits(tiny_model_dir, runs.train_ref / "adapter"),
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip


def test_kill_between_trainer_state_and_mathtune_state_keeps_the_token_count(
    runs, killed_copy, tiny_model_dir, fault_data, capsys
):
    # The Trainer writes trainer_state.json last, then mathtune's on_save writes mathtune_state.json
    # (elapsed time, token count). A kill between the two leaves a checkpoint the Trainer can resume
    # from but without mathtune's counters; num_tokens must not restart from zero.
    run = killed_copy
    (run / "checkpoints" / "checkpoint-6" / "mathtune_state.json").unlink()
    assert main_rc(train_args(tiny_model_dir, fault_data, run, "--resume")) == 0
    assert "checkpoint-6 is damaged (mathtune_state.json is missing)" in capsys.readouterr().err
    assert_metrics_match(read_metrics(run), read_metrics(runs.train_ref))
    s_got, s_ref = read_json(run / "train_summary.json"), read_json(runs.train_ref / "train_summary.json")
    assert s_got["tokens_trained"] == s_ref["tokens_trained"]


def test_kill_after_early_stopping_fired_resumes_to_the_same_end(tiny_model_dir, fault_data, tmp_path, capsys):
    # Early stopping fires at step 4 (a learning rate this small never improves the validation loss);
    # the checkpoint of step 4 records that training stopped. A kill before train_summary.json must not
    # make the resume train past the point where the uninterrupted run stopped.
    run = tmp_path / "es"
    extra = ["--set", "train.learning_rate=1e-30", "--set", "train.early_stopping_patience=1", "--set",
             "train.max_steps=8"]  # fmt: skip
    assert main_rc(train_args(tiny_model_dir, fault_data, run, *extra)) == 0
    ref = read_json(run / "train_summary.json")
    assert ref["early_stopped"] is True and ref["global_step"] == 4
    ref_metrics = read_metrics(run)
    (run / "train_summary.json").unlink()
    shutil.rmtree(run / "adapter")
    capsys.readouterr()
    assert main_rc(train_args(tiny_model_dir, fault_data, run, *extra, "--resume")) == 0
    got = read_json(run / "train_summary.json")
    for key in ("global_step", "early_stopped", "early_stopped_at", "best_step", "best_checkpoint", "tokens_trained"):
        assert got[key] == ref[key], key
    assert_metrics_match(read_metrics(run), ref_metrics)
