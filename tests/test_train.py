"""Training on the tiny random Llama: artifacts, metrics schema, resume, early stopping, guards."""

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import make_problem

from mathtune.config import load_config
from mathtune.errors import UserError
from mathtune.io import read_json, read_jsonl
from mathtune.train import find_resumable_checkpoint, train
from mathtune.train.callbacks import MetricsLogger
from mathtune.train.trainer import resolve_precision

TRAIN_KEYS = {
    "kind",
    "step",
    "epoch",
    "loss",
    "learning_rate",
    "grad_norm",
    "mean_token_accuracy",
    "num_tokens",
    "elapsed_s",
}
EVAL_KEYS = {"kind", "step", "epoch", "eval_loss", "eval_mean_token_accuracy", "elapsed_s"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gsm8k")
    (d / "train.jsonl").write_text("".join(json.dumps(make_problem(i)) + "\n" for i in range(16)))
    (d / "test.jsonl").write_text("".join(json.dumps(make_problem(100 + i)) + "\n" for i in range(4)))
    return d


def tiny_cfg(model: Path, data: Path, *extra: str):
    return load_config(
        overrides=[
            f"model.spec={model}",
            f"data.path={data}",
            "data.val_fraction=0.25",
            "data.max_seq_length=96",
            "train.batch_size=4",
            "train.eval_batch_size=4",
            "train.max_steps=4",
            "train.eval_steps=2",
            "train.save_steps=2",
            "train.logging_steps=1",
            "train.precision=fp32",
            "train.learning_rate=0.01",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def trained(tiny_model_dir, data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = tiny_cfg(tiny_model_dir, data_dir)
    summary = train(cfg, run, progress=False)
    return run, cfg, summary


def test_metrics_lines_follow_the_contract(trained):
    run, _, _ = trained
    rows = read_jsonl(run / "metrics.jsonl")
    assert rows[0]["kind"] == "eval" and rows[0]["step"] == 0 and rows[0]["epoch"] == 0.0
    trains = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in trains] == [1, 2, 3, 4]
    assert [r["step"] for r in evals] == [0, 2, 4]
    for r in trains:
        assert set(r) == TRAIN_KEYS
    for r in evals:
        assert set(r) == EVAL_KEYS
    for r in rows:
        for k, v in r.items():
            if k != "kind":
                assert isinstance(v, int | float) and math.isfinite(v), (k, v)
    for r in trains:
        assert 0.0 <= r["mean_token_accuracy"] <= 1.0 and r["loss"] > 0
    tokens = [r["num_tokens"] for r in trains]
    assert tokens == sorted(tokens) and tokens[0] > 0 and len(set(tokens)) == 4
    elapsed = [r["elapsed_s"] for r in rows]
    assert elapsed == sorted(elapsed)


def test_summary_and_adapter(trained):
    run, _, summary = trained
    assert read_json(run / "train_summary.json") == json.loads(json.dumps(summary))
    assert summary["status"] == "finished"
    assert summary["global_step"] == 4
    assert summary["n_train"] == 12 and summary["n_val"] == 4
    assert summary["best_step"] in (2, 4)
    assert summary["best_checkpoint"] == f"checkpoints/checkpoint-{summary['best_step']}"
    evals = {r["step"]: r["eval_loss"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "eval"}
    assert summary["best_eval_loss"] == pytest.approx(min(evals[2], evals[4]))
    last_train = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"][-1]
    assert summary["tokens_trained"] == last_train["num_tokens"]
    assert summary["precision"] == "fp32" and summary["device"] == "cpu"
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert summary["resumed_from"] is None and summary["early_stopped"] is False
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "adapter" / "tokenizer_config.json").is_file()
    # LoRA B starts at zero: a trained adapter has non-zero B matrices.
    from safetensors.torch import load_file

    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())


def test_data_split_uses_train_records_only(trained):
    run, _, summary = trained
    split = read_json(run / "data_split.json")
    assert len(split["train_ids"]) == summary["n_train"] and len(split["val_ids"]) == summary["n_val"]
    assert not set(split["train_ids"]) & set(split["val_ids"])
    assert all(i.startswith("train-") for i in split["train_ids"] + split["val_ids"])


def test_refuses_to_train_over_a_finished_run(trained):
    run, cfg, _ = trained
    before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match="finished"):
        train(cfg, run, progress=False)
    assert (run / "metrics.jsonl").read_bytes() == before


def test_resume_of_finished_run_returns_its_summary(trained):
    run, cfg, summary = trained
    before = (run / "metrics.jsonl").read_bytes()
    assert train(cfg, run, resume=True, progress=False) == read_json(run / "train_summary.json")
    assert (run / "metrics.jsonl").read_bytes() == before


class _Crash(Exception):
    pass


def test_resume_after_crash_continues_without_duplicates(trained, tiny_model_dir, data_dir, tmp_path, monkeypatch):
    full_run, _, _ = trained
    run = tmp_path / "crashed"
    cfg = tiny_cfg(tiny_model_dir, data_dir)
    original = MetricsLogger.on_step_end

    def crash_at_3(self, args, state, control, **kw):
        if state.global_step == 3:
            raise _Crash()
        return original(self, args, state, control, **kw)

    monkeypatch.setattr(MetricsLogger, "on_step_end", crash_at_3)
    with pytest.raises(_Crash):
        train(cfg, run, progress=False)
    monkeypatch.setattr(MetricsLogger, "on_step_end", original)
    assert not (run / "train_summary.json").exists()
    assert (run / "checkpoints" / "checkpoint-2").is_dir()

    with pytest.raises(UserError, match="--resume"):
        train(cfg, run, progress=False)
    summary = train(cfg, run, resume=True, progress=False)
    assert summary["resumed_from"] == "checkpoints/checkpoint-2"
    assert summary["global_step"] == 4
    rows = read_jsonl(run / "metrics.jsonl")
    keys = [(r["kind"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert [s for k, s in keys if k == "train"] == [1, 2, 3, 4]
    elapsed = [r["elapsed_s"] for r in rows]
    assert elapsed == sorted(elapsed)
    # The resumed run retraces the uninterrupted one (same data order, RNG state restored).
    full = {(r["kind"], r["step"]): r for r in read_jsonl(full_run / "metrics.jsonl")}
    for r in rows:
        ref = full[(r["kind"], r["step"])]
        assert r.get("loss", r.get("eval_loss")) == pytest.approx(ref.get("loss", ref.get("eval_loss")), rel=1e-4)
        if r["kind"] == "train":
            assert r["num_tokens"] == ref["num_tokens"]


def test_find_resumable_checkpoint_skips_damaged_files(trained, tmp_path, capsys):
    src, _, _ = trained
    run = tmp_path / "run"
    shutil.copytree(src / "checkpoints", run / "checkpoints")
    assert find_resumable_checkpoint(run).name == "checkpoint-4"

    weights = run / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a save cut short
    assert find_resumable_checkpoint(run).name == "checkpoint-2"
    assert "checkpoint-4 is damaged (adapter_model.safetensors" in capsys.readouterr().err

    optim = run / "checkpoints" / "checkpoint-2" / "optimizer.pt"
    data = bytearray(optim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a stored tensor
    optim.write_bytes(bytes(data))
    assert find_resumable_checkpoint(run) is None
    assert "optimizer.pt" in capsys.readouterr().err


def test_early_stopping_fires_and_is_recorded(tiny_model_dir, data_dir, tmp_path):
    # A learning rate this small leaves the validation loss unchanged, i.e. never improving.
    cfg = tiny_cfg(
        tiny_model_dir,
        data_dir,
        "train.learning_rate=1e-30",
        "train.max_steps=8",
        "train.early_stopping_patience=1",
        "train.logging_steps=2",
    )
    summary = train(cfg, tmp_path / "es", progress=False)
    assert summary["early_stopped"] is True
    assert summary["early_stopped_at"] == 4 and summary["global_step"] == 4
    assert summary["best_step"] == 2
    assert (tmp_path / "es" / "adapter" / "adapter_config.json").is_file()


def test_config_errors_before_anything_is_written(tiny_model_dir, data_dir, tmp_path):
    cfg = tiny_cfg(tiny_model_dir, data_dir, "train.save_steps=3")
    with pytest.raises(UserError, match=r"train\.save_steps \(3\) must be a multiple of train\.eval_steps \(2\)"):
        train(cfg, tmp_path / "r1", progress=False)
    assert not (tmp_path / "r1").exists()


def test_missing_tracker_is_a_user_error(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = tiny_cfg(tiny_model_dir, data_dir, "train.report_to=[wandb]")
    with pytest.raises(UserError, match="'wandb' is requested but not installed"):
        train(cfg, tmp_path / "r2", progress=False)
    assert not (tmp_path / "r2").exists()


def test_precision_resolution(monkeypatch):
    import mathtune.models

    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")
    monkeypatch.setattr(mathtune.models, "cpu_supports_bf16", lambda: True)
    p = resolve_precision("auto", "cpu")
    assert (p.label, p.bf16, p.use_cpu) == ("bf16-autocast", True, True)
    monkeypatch.setattr(mathtune.models, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", "cpu").label == "fp32"


def test_compact_lm_head_gives_the_same_loss_and_gradients(tiny_model_dir):
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from mathtune.train.speed import Tuning, compact_lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 12))
    labels = ids.clone()
    labels[:, :7] = -100  # prompt positions
    labels[1, 10:] = -100  # padding

    def loss_and_grad():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        loss = -out.log_probs.sum() / out.label_mask.sum()
        loss.backward()
        return loss.item(), model.model.layers[0].mlp.up_proj.weight.grad.clone(), out.is_top1.sum().item()

    original = trl_utils._use_triton
    full = loss_and_grad()
    with compact_lm_head(True) as active:
        assert active and trl_utils._use_triton is not original
        compact = loss_and_grad()
    assert trl_utils._use_triton is original
    assert compact[0] == pytest.approx(full[0], rel=1e-5)
    assert torch.allclose(compact[1], full[1], rtol=1e-4, atol=1e-7)
    assert compact[2] == full[2]
    assert Tuning().resolved("cpu") == Tuning(group_by_length=True, compact_lm_head=True)
