"""Multiple-choice scoring by log-likelihood, as lm-evaluation-harness scores `output_type: multiple_choice`.

For each choice c: ll(c) = sum of log P(token | context, earlier tokens of c) over the continuation
tokens of " " + c (lm-eval's target_delimiter). acc picks argmax ll; acc_norm picks argmax
ll / len(c in UTF-8 bytes), c without the delimiter (lm-eval divides by len(c) in characters: the
same number for ASCII text, which ARC/MMLU/HellaSwag almost entirely are).

Tokenisation follows lm-eval's HFLM._encode_pair (lm_eval/models/huggingface.py): trailing spaces of
the context move to the continuation, `context + continuation` is encoded as one string without
special tokens, and the continuation tokens are the tail after len(encode(context)) tokens. The model
input is encode(context) + those tail tokens, so the context tokens are identical for every choice.

That makes the context shareable: it is run ONCE per item with the KV cache kept; the first token of
every choice is scored from the context's last logits, and the rest of all choices go through one
batched forward on top of the cache (choices padded on the right, which a causal model never sees
from the valid positions). MMLU's choices are single tokens, so an MMLU item costs one forward.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from mathtune.io import JsonlAppender, atomic_write_json
from mathtune.tasks.common import RECORDS, SUMMARY, acc_entry, existing_summary, get_model, ids_sha, prepare_output
from mathtune.tasks.loaders import TEMPLATES, MCItem, load_mc

TARGET_DELIMITER = " "
HEADLINES = {"arc_easy": "acc_norm", "arc_challenge": "acc_norm", "hellaswag": "acc_norm", "mmlu": "acc"}


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) the way lm-eval's HFLM splits them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx) :]
    if not cont:
        # A merge across the boundary swallowed the continuation (never seen with " "+text choices);
        # score its own tokens rather than an empty sequence that would always win with ll = 0.
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    return ctx, cont


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _cache_kwarg(model: Any) -> str:
    # transformers 5.x renamed the forward argument `past_key_values` to `cache`; accept both.
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def score_choices(model: Any, ctx: list[int], conts: list[list[int]], *, batch_size: int = 16) -> list[float]:
    """Summed log-probability of each continuation after `ctx` (context run once, KV cache reused)."""
    import torch

    device = _device(model)
    max_len = int(getattr(model.config, "max_position_embeddings", 0) or 4096)
    longest = max(len(c) for c in conts)
    if len(ctx) + longest > max_len:  # lm-eval truncates from the left as well
        ctx = ctx[-(max_len - longest) :]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ctx], device=device), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        lls = [float(first[c[0]]) for c in conts]
        # transformers 5.x names the KV cache `cache` (`past_key_values` is deprecated)
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = out.past_key_values
        multi = [i for i, c in enumerate(conts) if len(c) > 1]
        for start in range(0, len(multi), max(1, batch_size)):
            rows = multi[start : start + max(1, batch_size)]
            width = max(len(conts[i]) - 1 for i in rows)
            # Feed tokens 0..L-2 of each choice; the logits at step j score token j+1.
            inp = torch.zeros((len(rows), width), dtype=torch.long, device=device)
            for r, i in enumerate(rows):
                inp[r, : len(conts[i]) - 1] = torch.tensor(conts[i][:-1])
            step_cache = copy.deepcopy(cache) if start + len(rows) < len(multi) else cache
            step_cache.batch_repeat_interleave(len(rows))
            logits = model(input_ids=inp, use_cache=True, **{_cache_kwarg(model): step_cache}).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, i in enumerate(rows):
                tail = torch.tensor(conts[i][1:], device=device)
                lls[i] += float(logp[r, : len(tail)].gather(-1, tail[:, None]).sum())
    return lls


def argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: xs[i])  # first maximum, as numpy.argmax


def score_item(model: Any, tokenizer: Any, item: MCItem, *, batch_size: int = 16) -> dict[str, Any]:
    """One records.jsonl line for `item`."""
    pairs = [encode_pair(tokenizer, item.context, TARGET_DELIMITER + c) for c in item.choices]
    ctx = pairs[0][0]
    lls = score_choices(model, ctx, [p[1] for p in pairs], batch_size=batch_size)
    nbytes = [max(1, len(c.encode("utf-8"))) for c in item.choices]
    pick = argmax(lls)
    pick_norm = argmax([ll / b for ll, b in zip(lls, nbytes, strict=True)])
    rec: dict[str, Any] = {
        "id": item.id,
        "gold": item.gold,
        "pick": pick,
        "pick_norm": pick_norm,
        "loglik": lls,
        "choice_bytes": nbytes,
        "correct": pick == item.gold,
        "correct_norm": pick_norm == item.gold,
    }
    if item.subject is not None:
        rec["subject"] = item.subject
    return rec


def _accuracy(records: list[dict]) -> dict[str, dict]:
    n = len(records)
    return {
        "acc": acc_entry(sum(bool(r["correct"]) for r in records), n),
        "acc_norm": acc_entry(sum(bool(r["correct_norm"]) for r in records), n),
    }


def summarize(task: str, records: list[dict], *, model: str, adapter: str | None, settings: dict) -> dict:
    summary: dict[str, Any] = {
        "task": task,
        "model": model,
        "adapter": adapter,
        "n": len(records),
        "settings": settings,
        "headline": HEADLINES[task],
        "accuracy": _accuracy(records),
    }
    if task == "mmlu":
        by_subject: dict[str, list[dict]] = {}
        for r in records:
            by_subject.setdefault(r.get("subject") or "?", []).append(r)
        subjects = {s: _accuracy(rs) for s, rs in sorted(by_subject.items())}
        summary["subjects"] = subjects
        # macro: every subject weighs the same; micro: every question does (= "accuracy" above,
        # and what lm-eval's mmlu group reports with weight_by_size).
        summary["macro"] = {m: sum(s[m]["acc"] for s in subjects.values()) / len(subjects) for m in ("acc", "acc_norm")}
        summary["micro"] = {m: summary["accuracy"][m]["acc"] for m in ("acc", "acc_norm")}
    return summary


def evaluate_mc(
    task: str,
    *,
    model: str,
    adapter: str | None = None,
    data: str | None = None,
    limit: int | None = None,
    output: Path,
    batch_size: int = 16,
    dtype: str = "auto",
    seed: int = 42,
    overwrite: bool = False,
    progress: bool = True,
    loaded: tuple | None = None,
) -> dict[str, Any]:
    """Score a multiple-choice task; writes records.jsonl (resumable) and summary.json under `output`."""
    items, data_used, family = load_mc(task, data, limit)
    template, version = TEMPLATES[family]
    settings = {
        "task": task,
        "data": data_used,
        "split": "validation" if task == "hellaswag" else "test",
        "limit": limit,
        "limit_per": "subject" if task == "mmlu" else "total",
        "num_fewshot": 0,
        "template": template,
        "template_version": version,
        "acc_norm_length": "utf8_bytes",
        "dtype": dtype,
        "seed": seed,
        "item_ids_sha": ids_sha(it.id for it in items),
    }
    output = Path(output)
    done = prepare_output(output, settings, overwrite=overwrite)
    if done is None:
        return existing_summary(output)
    todo = [it for it in items if it.id not in done]
    t0 = time.perf_counter()
    if todo:
        import torch
        from tqdm.auto import tqdm

        torch.manual_seed(seed)  # nothing here is random; kept so a future sampler is seeded
        lm, tok = get_model(model, adapter=adapter, dtype=dtype, loaded=loaded)
        with JsonlAppender(output / RECORDS) as w:
            for item in tqdm(todo, desc=task, disable=not progress):
                rec = score_item(lm, tok, item, batch_size=batch_size)
                w.write(rec)
                done[item.id] = rec
    records = [done[it.id] for it in items]
    summary = summarize(task, records, model=model, adapter=adapter, settings=settings)
    summary["scoring_seconds"] = round(time.perf_counter() - t0, 2)
    summary["scored_this_run"] = len(todo)
    atomic_write_json(output / SUMMARY, summary)
    return summary
