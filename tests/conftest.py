"""Shared fixtures: a tiny randomly initialised Llama (no download) and small GSM8K-format data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
GSM8K_DIR = SHARED_DATA / "gsm8k"


def make_problem(i: int) -> dict[str, str]:
    a, b = 3 + i, 4 + 2 * i
    return {
        "question": f"Tom has {a} apples and buys {b} more. How many apples does he have now?",
        "answer": f"Tom has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}",
    }


_HOLD_LOCK = """
import sys, time
from mathtune.locks import dir_lock
with dir_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def lock_holder():
    """hold(directory): start another process that takes `directory`'s mathtune lock and keeps it;
    returns that process once it holds the lock. Every one is killed at the end of the test."""
    procs: list[subprocess.Popen] = []

    def hold(directory: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(directory)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture
def gsm8k_dir(tmp_path: Path) -> Path:
    """A GSM8K-format directory with 24 train and 8 test records (hand-made, deterministic)."""
    d = tmp_path / "gsm8k"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps(make_problem(i)) + "\n" for i in range(24)))
    (d / "test.jsonl").write_text("".join(json.dumps(make_problem(100 + i)) + "\n" for i in range(8)))
    return d


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct, converted once to a cached safetensors directory."""
    from mathtune.models import resolve_model

    return Path(resolve_model("smollm2-135m").path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """A 2-layer, 64-wide random Llama with SmolLM2's tokenizer and chat template, saved locally."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
