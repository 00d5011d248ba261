"""Benchmark: mathtune LoRA training vs TRL SFTTrainer + PEFT with default settings, on CPU.

Both sides fine-tune SmolLM2-135M-Instruct with the same LoRA (r 8, alpha 16, dropout 0.1,
all-linear), learning rate 2e-4, batch 8, the same GSM8K training records (mathtune's seeded split
of the train file), the same prompt/completion format and max length, for the same epochs:
- baseline: `SFTTrainer(model, SFTConfig(...), peft_config=...)` with TRL's defaults otherwise
  (fp32 on CPU, padded batches in random order, TRL's default activation checkpointing);
- mathtune: `mathtune.train.train` with its CPU defaults (bf16 autocast, length-grouped batches,
  LM head on completion positions only), or the `--tuning` variant given.

Each side runs in its own subprocess, so peak RSS (ru_maxrss) is measured fairly. Throughput is
non-padding training tokens (TRL's counter, both sides) per second of training steps; mathtune's
validation passes are excluded from its time. The final validation loss of both adapters is
computed by one function (fp32, completion tokens, token-weighted mean over the validation set).
Last line: `RATIO train <mathtune tok/s / baseline tok/s>`.

    .venv/bin/python bench/train.py                    # the issue's setting: 256 records, 1 epoch
    .venv/bin/python bench/train.py --n 64 --val 16    # while developing
    .venv/bin/python bench/train.py --sides mathtune --tuning group_by_length=0,compact_lm_head=0
"""

from __future__ import annotations

import argparse
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

LORA = {"r": 8, "alpha": 16, "dropout": 0.1, "bias": "none", "target_modules": "all-linear"}


def bench_config(args):
    from mathtune.config import load_config

    return load_config(
        overrides={
            "model": {"spec": args.model},
            "data": {
                "path": args.data,
                "train_limit": args.n,
                "val_limit": args.val,
                "max_seq_length": args.max_seq_length,
            },
            "lora": LORA,
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "eval_batch_size": 16,
                "learning_rate": 2e-4,
                "logging_steps": 5,
                # one checkpoint/eval at the end only: the benchmark times training
                "eval_steps": 100000,
                "save_steps": 100000,
                "early_stopping_patience": None,
                "num_threads": args.threads,
            },
        }
    )


def validation_loss(model, tok, problems, fmt: str, max_len: int) -> tuple[float, int]:
    """Token-weighted mean NLL over completion tokens, fp32, no autocast: the same yardstick for both."""
    import torch

    from mathtune.data.formatting import to_prompt_completion

    model.eval()
    total, count = 0.0, 0
    for p in problems:
        ex = to_prompt_completion(p, fmt)
        if fmt == "chat":
            prompt = tok.apply_chat_template(ex["prompt"], tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=False)
        else:
            prompt, full = ex["prompt"], ex["prompt"] + ex["completion"] + tok.eos_token
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"][:max_len]
        x = torch.tensor([ids])
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            logits = model(input_ids=x).logits.float()
        logp = torch.log_softmax(logits[0, :-1], -1).gather(-1, x[0, 1:, None])[:, 0]
        mask = torch.arange(1, len(ids)) >= len(p_ids)
        total += float(-(logp * mask).sum())
        count += int(mask.sum())
    return total / max(count, 1), count


def worker_trl(args, out: Path) -> dict:
    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from mathtune.models import load_model
    from mathtune.train.dataset import select_problems, to_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = bench_config(args)
    model, tok, _ = load_model(cfg.model.spec, dtype="fp32", device="cpu")
    data = select_problems(cfg, tok)
    sft = SFTConfig(
        output_dir=str(out / "trl"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=2e-4,
        max_length=args.max_seq_length,
        bf16=False,  # TRL's default bf16=True needs a GPU or use_cpu; fp32 is the plain CPU setting
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_steps=5,
        seed=cfg.seed,
        disable_tqdm=True,
    )
    peft = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.1, bias="none", target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(
        model=model,
        args=sft,
        train_dataset=to_dataset(data.train, data.fmt, strip_annotations=True),
        processing_class=tok,
        peft_config=peft,
    )
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    tokens = int(trainer._total_train_tokens)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    val, n_tok = validation_loss(trainer.model, tok, data.val, data.fmt, args.max_seq_length)
    return {
        "side": "trl",
        "tokens": tokens,
        "seconds": seconds,
        "tok_s": tokens / seconds,
        "steps": trainer.state.global_step,
        "last_train_loss": losses[-1] if losses else None,
        "val_loss": val,
        "val_tokens": n_tok,
        "settings": "fp32, random padded batches, TRL defaults",
    }


def worker_mathtune(args, out: Path) -> dict:
    from mathtune.io import read_jsonl
    from mathtune.models import load_model
    from mathtune.train import train
    from mathtune.train.dataset import select_problems
    from mathtune.train.speed import Tuning

    cfg = bench_config(args)
    if args.precision:
        cfg.train.precision = args.precision
    knobs = dict(kv.split("=") for kv in args.tuning.split(",")) if args.tuning else {}
    tuning = Tuning(**{k: bool(int(v)) for k, v in knobs.items()})
    summary = train(cfg, out / "mt", progress=False, tuning=tuning)
    seconds = summary["train_seconds"] - summary["eval_seconds"]
    model, tok, _ = load_model(cfg.model.spec, dtype="fp32", device="cpu", adapter=out / "mt" / "adapter")
    data = select_problems(cfg, tok)
    val, n_tok = validation_loss(model, tok, data.val, data.fmt, args.max_seq_length)
    trains = [r for r in read_jsonl(out / "mt" / "metrics.jsonl") if r["kind"] == "train"]
    return {
        "side": "mathtune",
        "tokens": summary["tokens_trained"],
        "seconds": seconds,
        "tok_s": summary["tokens_trained"] / seconds,
        "steps": summary["global_step"],
        "last_train_loss": trains[-1]["loss"] if trains else None,
        "val_loss": val,
        "val_tokens": n_tok,
        "settings": f"{summary['precision']}, {tuning.resolved(summary['device'])}",
    }


def run_side(side: str, argv: list[str]) -> dict:
    """Run one side in a fresh interpreter; return its result with the child's peak RSS."""
    with tempfile.TemporaryDirectory(prefix=f"bench-train-{side}-") as tmp:
        res_file = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, *argv, "--worker", side, "--workdir", tmp]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read() if proc.stderr else ""
        if proc.returncode != 0 or not res_file.is_file():
            sys.exit(f"bench/train.py: {side} side failed (exit {proc.returncode}):\n{err[-3000:]}")
        res = json.loads(res_file.read_text())
        res["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: KiB
        res["wall_s"] = time.perf_counter() - t
        return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--n", type=int, default=256, help="training records")
    ap.add_argument("--val", type=int, default=32, help="validation records for the final loss")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-seq-length", type=int, default=384)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--sides", default="trl,mathtune", help="comma list: trl, mathtune")
    ap.add_argument("--tuning", default="", help="mathtune knobs, e.g. group_by_length=0,compact_lm_head=1")
    ap.add_argument("--precision", default="", help="mathtune train.precision (default: its auto)")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        out = Path(args.workdir)
        fn = worker_trl if args.worker == "trl" else worker_mathtune
        (out / "result.json").write_text(json.dumps(fn(args, out)))
        return

    argv = [a for a in sys.argv[1:]]
    results = {}
    for side in [s.strip() for s in args.sides.split(",") if s.strip()]:
        print(f"running {side} ...", flush=True)
        results[side] = run_side(side, argv)
        r = results[side]
        print(
            f"  {side:<9} {r['tokens']:>7} tokens in {r['seconds']:7.1f}s = {r['tok_s']:7.1f} tok/s; "
            f"steps {r['steps']}; final val loss {r['val_loss']:.4f} ({r['val_tokens']} tokens); "
            f"peak RSS {r['peak_rss_mb']:.0f} MB; wall {r['wall_s']:.0f}s; [{r['settings']}]",
            flush=True,
        )
    if "trl" in results and "mathtune" in results:
        a, b = results["mathtune"], results["trl"]
        ratio = a["tok_s"] / b["tok_s"]
        dval = (a["val_loss"] - b["val_loss"]) / b["val_loss"]
        print(
            f"speed mathtune/trl {ratio:.2f}x; val loss difference {100 * dval:+.2f}% "
            f"(mathtune {a['val_loss']:.4f} vs trl {b['val_loss']:.4f}); "
            f"peak RSS {a['peak_rss_mb']:.0f} vs {b['peak_rss_mb']:.0f} MB"
        )
        print(f"RATIO train {ratio:.3f}")


if __name__ == "__main__":
    main()
