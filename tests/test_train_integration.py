"""A few LoRA steps on the real SmolLM2-135M-Instruct and real GSM8K records."""

import math

import pytest
from conftest import GSM8K_DIR

from mathtune.config import load_config
from mathtune.io import read_jsonl
from mathtune.train import train

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not (GSM8K_DIR / "train.jsonl").is_file(), reason="shared GSM8K copy not present")
def test_smollm2_lora_steps_log_finite_metrics_and_adapter_reloads(tmp_path):
    import torch

    from mathtune.models import load_model

    cfg = load_config(
        overrides=[
            "model.spec=smollm2-135m",
            f"data.path={GSM8K_DIR}",
            "data.train_limit=24",
            "data.val_limit=8",
            "data.max_seq_length=160",  # short rows keep this test cheap on 2 shared cores
            "train.batch_size=2",
            "train.eval_batch_size=8",
            "train.max_steps=2",
            "train.eval_steps=2",
            "train.save_steps=2",
            "train.logging_steps=1",
        ]
    )
    run = tmp_path / "smol"
    summary = train(cfg, run, progress=False)
    assert summary["global_step"] == 2 and summary["n_train"] == 24 and summary["n_val"] == 8

    rows = read_jsonl(run / "metrics.jsonl")
    trains = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2]
    for r in trains:
        assert math.isfinite(r["loss"]) and 0 < r["loss"] < 5
        assert 0 < r["mean_token_accuracy"] < 1
    for r in evals:
        assert math.isfinite(r["eval_loss"]) and 0 < r["eval_loss"] < 5
        assert 0 < r["eval_mean_token_accuracy"] < 1

    # The saved adapter reloads and changes the model's predictions.
    base, tok, _ = load_model("smollm2-135m", dtype="fp32")
    tuned, _, _ = load_model("smollm2-135m", dtype="fp32", adapter=run / "adapter")
    ids = tok("Natalia sold clips to 48 of her friends in April.", return_tensors="pt")
    with torch.no_grad():
        a = base(**ids).logits
        b = tuned(**ids).logits
    assert torch.isfinite(b).all()
    assert (a - b).abs().max().item() > 1e-4
