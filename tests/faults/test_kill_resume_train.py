"""`mathtune train` SIGKILLed in the middle of an epoch, then `--resume`d, ends where an uninterrupted run ends.

The killed run (tests/faults/conftest.py) stopped at the end of step 7 of 12, in the first of two
epochs, with checkpoints 2, 4 and 6 on disk. Resuming continues from checkpoint-6: the data order
of the rest of the epoch, the RNG state (LoRA dropout) and the optimizer state must all come back,
or the losses and the final adapter would differ.
"""

from __future__ import annotations

import shutil

import torch

from faults.conftest import (
    KILL_STEP,
    MAX_STEPS,
    adapter_logits,
    assert_metrics_match,
    main_rc,
    metric_keys,
    read_metrics,
    train_args,
)
from mathtune.io import read_json
from mathtune.locks import LOCK_NAME


def test_killed_run_left_a_resumable_state_and_no_summary(runs):
    killed = runs.train_killed
    assert not (killed / "train_summary.json").exists() and not (killed / "adapter").exists()
    steps = sorted(int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("checkpoint-*"))
    assert steps == [2, 4, 6]
    # Step 7 was computed but never logged: the kill came before its log line.
    assert max(r["step"] for r in read_metrics(killed)) == KILL_STEP - 1


def test_unfinished_run_is_refused_without_resume(runs, tiny_model_dir, fault_data, tmp_path, capsys):
    run = tmp_path / "killed"
    shutil.copytree(runs.train_killed, run)
    # The killed process left its lock file (its lock died with it); the next process to take the
    # directory removes it. Every artifact stays as it was.
    assert (run / LOCK_NAME).is_file()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    assert main_rc(train_args(tiny_model_dir, fault_data, run)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --resume to continue it" in err[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(runs, tiny_model_dir):
    run = runs.train_resumed
    assert "resuming from" in runs.logs["train-resumed"] and "checkpoint-6 (step 6)" in runs.logs["train-resumed"]

    ref = read_metrics(runs.train_ref)
    got = read_metrics(run)
    # Every step exactly once, in order: no duplicated step 7, no gap.
    keys = metric_keys(got)
    assert len(keys) == len(set(keys))
    assert [s for k, s in keys if k == "train"] == list(range(1, MAX_STEPS + 1))
    assert [s for k, s in keys if k == "eval"] == list(range(0, MAX_STEPS + 1, 2))
    assert_metrics_match(got, ref)
    elapsed = [r["elapsed_s"] for r in got]
    assert elapsed == sorted(elapsed)  # the clock continues across the resume

    s_ref, s_got = read_json(runs.train_ref / "train_summary.json"), read_json(run / "train_summary.json")
    assert s_got["resumed_from"] == "checkpoints/checkpoint-6" and s_ref["resumed_from"] is None
    for key in ("status", "global_step", "epochs_done", "max_steps", "early_stopped", "best_step", "best_checkpoint",
                "n_train", "n_val", "tokens_trained", "trainable_params", "total_params", "precision"):  # fmt: skip
        assert s_got[key] == s_ref[key], key
    assert abs(s_got["best_eval_loss"] - s_ref["best_eval_loss"]) <= 1e-4 * abs(s_ref["best_eval_loss"])

    # The final adapters compute the same function, and the check can tell an adapter from none.
    a = adapter_logits(tiny_model_dir, runs.train_ref / "adapter")
    b = adapter_logits(tiny_model_dir, run / "adapter")
    assert not torch.allclose(a, adapter_logits(tiny_model_dir, None), atol=1e-3)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
