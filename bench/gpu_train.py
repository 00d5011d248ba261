"""Benchmark: LoRA training throughput and peak memory at Llama-3.2-3B shapes, mathtune vs TRL defaults.

The model is a randomly initialised Llama with Llama-3.2-3B's shapes (no download): hidden 3072,
28 layers, 24 heads / 8 KV heads, MLP 8192, vocabulary 128256, tied embeddings. Rows are real
GSM8K training records in mathtune's prompt/completion format, tokenized with SmolLM2's tokenizer
(its ids are valid in the larger vocabulary; row lengths are what matters for speed). Both sides
train the same LoRA (r 8, alpha 16, dropout 0.1, all-linear) for a fixed number of steps:
- baseline: TRL `SFTTrainer` + PEFT with defaults (bf16 on GPU, padded batches, activation
  checkpointing);
- mathtune: `mathtune.train.train` with bf16, packing (padding-free) on GPU, Liger kernels when
  installed.

Each side runs in its own subprocess; printed: non-padding tokens/s, peak GPU memory (CUDA) or
peak RSS (CPU). Last line: `RATIO gpu_train <mathtune tok/s / baseline tok/s>`.

    .venv/bin/python bench/gpu_train.py                  # on a GPU machine
    .venv/bin/python bench/gpu_train.py --tiny --steps 4 # CPU smoke run with tiny shapes
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# As the CLI does, before torch loads: see mathtune.openmp.
sys.path.insert(0, str(REPO / "src"))
from mathtune.openmp import configure_openmp  # noqa: E402

OPENMP = configure_openmp()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LLAMA_3B = dict(
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=28,
    num_attention_heads=24,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128256,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)


def make_model_dir(out: Path, tiny: bool, tokenizer_dir: str) -> Path:
    """Save a random-init Llama (bf16 on GPU) plus a tokenizer, as a local model directory."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(
        **(TINY if tiny else LLAMA_3B),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(dtype)
    d = out / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def bench_config(args, model_dir: Path):
    from mathtune.config import load_config

    gpu = _cuda()
    return load_config(
        overrides={
            "model": {"spec": str(model_dir)},
            "data": {
                "path": args.data,
                "train_limit": args.steps * args.batch_size,
                "val_limit": 8,
                "max_seq_length": args.max_seq_length,
            },
            "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"},
            "train": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "eval_batch_size": 8,
                "eval_steps": 100000,
                "save_steps": 100000,
                "logging_steps": 1,
                "early_stopping_patience": None,
                "packing": gpu,
                "use_liger_kernel": gpu and importlib.util.find_spec("liger_kernel") is not None,
            },
        }
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _peak_memory_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def worker(side: str, args, out: Path) -> dict:
    model_dir = make_model_dir(out, args.tiny, args.tokenizer)
    cfg = bench_config(args, model_dir)
    if side == "mathtune":
        from mathtune.train import train

        s = train(cfg, out / "mt", progress=False)
        seconds = s["train_seconds"] - s["eval_seconds"]
        return {
            "tokens": s["tokens_trained"],
            "seconds": seconds,
            "steps": s["global_step"],
            "peak_gpu_mb": _peak_memory_mb(),
            "settings": f"{s['precision']}, packing={cfg.train.packing}, liger={cfg.train.use_liger_kernel}",
        }

    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from mathtune.models import load_model
    from mathtune.train.dataset import select_problems, to_dataset

    model, tok, _ = load_model(str(model_dir))
    data = select_problems(cfg, tok)
    sft = SFTConfig(
        output_dir=str(out / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=2e-4,
        max_length=args.max_seq_length,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not _cuda(),
        bf16=_cuda(),
    )
    trainer = SFTTrainer(
        model=model,
        args=sft,
        processing_class=tok,
        train_dataset=to_dataset(data.train, data.fmt, strip_annotations=True),
        peft_config=LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    return {
        "tokens": int(trainer._total_train_tokens),
        "seconds": seconds,
        "steps": trainer.state.global_step,
        "peak_gpu_mb": _peak_memory_mb(),
        "settings": "TRL defaults (bf16 on GPU, padded, checkpointing)",
    }


def run_side(side: str, argv: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-gpu-train-{side}-") as tmp:
        cmd = [sys.executable, __file__, *argv, "--worker", side, "--workdir", tmp]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        err = proc.stderr.read() if proc.stderr else ""
        res_file = Path(tmp) / "result.json"
        if os.waitstatus_to_exitcode(status) != 0 or not res_file.is_file():
            sys.exit(f"bench/gpu_train.py: {side} side failed:\n{err[-3000:]}")
        res = json.loads(res_file.read_text())
        res["peak_rss_mb"] = usage.ru_maxrss / 1024
        res["tok_s"] = res["tokens"] / res["seconds"]
        return res


def main() -> None:
    from mathtune.models import resolve_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke run)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-seq-length", type=int, default=512)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--tokenizer", default="", help="tokenizer directory (default: the embedded SmolLM2's)")
    ap.add_argument("--sides", default="trl,mathtune")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.tokenizer:
        args.tokenizer = resolve_model("smollm2-135m").path
    if args.worker:
        (Path(args.workdir) / "result.json").write_text(json.dumps(worker(args.worker, args, Path(args.workdir))))
        return

    argv = [*sys.argv[1:], "--tokenizer", args.tokenizer]
    results = {}
    for side in [s.strip() for s in args.sides.split(",") if s.strip()]:
        r = results[side] = run_side(side, argv)
        mem = f"peak GPU {r['peak_gpu_mb']:.0f} MB" if r["peak_gpu_mb"] else f"peak RSS {r['peak_rss_mb']:.0f} MB"
        print(
            f"{side:<9} {r['tokens']:>8} tokens in {r['seconds']:7.1f}s = {r['tok_s']:8.1f} tok/s; "
            f"{r['steps']} steps; {mem}; [{r['settings']}]",
            flush=True,
        )
    if "trl" in results and "mathtune" in results:
        print(f"RATIO gpu_train {results['mathtune']['tok_s'] / results['trl']['tok_s']:.3f}")


if __name__ == "__main__":
    main()
