"""Benchmark: mathtune's greedy GSM8K evaluation vs plain `model.generate`.

Both sides get the same prompts (the `chat` style), greedy decoding, max_new_tokens 256, batch 32:
- baseline: `model.generate` over batches of 32 items in item order, left padding, stopping on EOS;
- mathtune: `evaluate_gsm8k` (continuous-batching decode loop, records and summary written).

Prints generated tokens/s and wall time of each side, the speed ratio, and how many items'
extracted answers (and texts) differ. Last line: `RATIO eval <mathtune tok/s / baseline tok/s>`.

    .venv/bin/python bench/eval.py --limit 200          # the issue's setting
    .venv/bin/python bench/eval.py --limit 20           # while developing
    .venv/bin/python bench/eval.py --limit 1319 --no-baseline   # full test set, mathtune only
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# As the CLI does, before torch loads: see mathtune.openmp.
sys.path.insert(0, str(REPO / "src"))
from mathtune.openmp import configure_openmp  # noqa: E402

OPENMP = configure_openmp()


def baseline(model, tok, prompts, *, batch_size, max_new_tokens, stop):
    import torch

    from mathtune.generate.base import truncate_at_stop

    tok.padding_side = "left"
    texts, tokens = [], 0
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id) + 1]
            tokens += len(row)  # useful tokens: up to and including EOS, not the padding after it
            ids = row[:-1] if row and row[-1] == tok.eos_token_id else row
            texts.append(truncate_at_stop(tok.decode(ids, skip_special_tokens=False), stop)[0])
    return texts, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32, help="the baseline's batch size (the issue's: 32)")
    ap.add_argument(
        "--mathtune-batch-size", type=int, default=None, help="mathtune's sequences in flight (default: its own, 256)"
    )
    ap.add_argument("--engine", default="auto", help="mathtune's decode path: auto, fast or transformers")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--workers", type=int, default=None, help="mathtune's decoding loops (default: its own choice; 1: one loop)"
    )
    ap.add_argument("--no-baseline", action="store_true", help="time mathtune only")
    ap.add_argument("--output", type=Path, default=None, help="eval output dir (default: a temp dir)")
    args = ap.parse_args()

    import torch

    from mathtune.data.extraction import answers_match, extract_flexible
    from mathtune.data.gsm8k import load_gsm8k
    from mathtune.evaluate import evaluate_gsm8k
    from mathtune.io import read_jsonl
    from mathtune.models import load_model
    from mathtune.prompts import build_prompt, stop_sequences

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.workers:
        os.environ["MATHTUNE_DECODE_WORKERS"] = str(args.workers)
    model, tok, _ = load_model(args.model, dtype=args.dtype)
    problems = load_gsm8k(args.data, "test", limit=args.limit)
    print(
        f"{len(problems)} items, max_new_tokens {args.max_new_tokens}, dtype {next(model.parameters()).dtype}, "
        f"threads {torch.get_num_threads()}, decode workers {os.environ.get('MATHTUNE_DECODE_WORKERS', 'auto')}, "
        f"cpus {os.cpu_count()}, OpenMP wait: {OPENMP}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )

    out = args.output or Path(tempfile.mkdtemp(prefix="mathtune-bench-eval-"))
    t0 = time.perf_counter()
    summary = evaluate_gsm8k(
        model=args.model,
        data=args.data,
        limit=args.limit,
        batch_size=args.mathtune_batch_size or 256,
        engine=args.engine,
        max_new_tokens=args.max_new_tokens,
        dtype=args.dtype,
        output=out,
        overwrite=True,
        progress=False,
        loaded=(model, tok),
    )
    m_wall = time.perf_counter() - t0
    recs = read_jsonl(out / "records.jsonl")
    m_tokens = summary["generated_tokens"]
    print(
        f"mathtune: {m_tokens} tokens in {m_wall:.1f}s = {m_tokens / m_wall:.1f} tok/s; "
        f"accuracy flexible {summary['accuracy']['flexible']['acc']:.3f}, strict "
        f"{summary['accuracy']['strict']['acc']:.3f}; truncated {summary['truncation_rate']:.1%}"
    )
    if args.no_baseline:
        print(f"RATIO eval nan (no baseline run; mathtune {m_tokens / m_wall:.1f} tok/s)")
        return

    prompts = [build_prompt("chat", p.question, tok) for p in problems]
    t0 = time.perf_counter()
    texts, b_tokens = baseline(
        model,
        tok,
        prompts,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        stop=stop_sequences("chat", tok),
    )
    b_wall = time.perf_counter() - t0
    print(
        f"baseline (model.generate, batch {args.batch_size}, left padding): {b_tokens} tokens in "
        f"{b_wall:.1f}s = {b_tokens / b_wall:.1f} tok/s"
    )
    diff_answers = diff_texts = 0
    for r, t, p in zip(recs, texts, problems, strict=True):
        mine, theirs = r["flexible"], extract_flexible(t)
        same = (mine is None and theirs is None) or (
            mine is not None and theirs is not None and answers_match(mine, theirs)
        )
        diff_answers += not same
        if r["generations"][0]["text"] != t:
            diff_texts += 1
            print(f"  text differs: {p.id} answer {mine!r} vs {theirs!r}", file=sys.stderr)
    ratio = (m_tokens / m_wall) / (b_tokens / b_wall)
    print(f"wall: mathtune {m_wall:.1f}s, baseline {b_wall:.1f}s; speedup {b_wall / m_wall:.2f}x")
    print(f"items whose extracted answer differs: {diff_answers}/{len(problems)}; texts differ: {diff_texts}")
    print(f"RATIO eval {ratio:.2f}")


if __name__ == "__main__":
    main()
