"""Self-verification as a second chat turn (task `gsm8k_selfverify`).

Turn 1 is the zero-shot `chat` prompt (user = the question), answered greedily. Turn 2 appends the
model's answer as the assistant turn and a user turn asking it to check that solution step by step
and state a final answer; it is answered greedily too. Both answers are scored by the flexible rule
(last number), and the summary reports accuracy before and after the second turn and how many
answers flipped right->wrong and wrong->right (with McNemar's exact test on those two counts).

A second turn without any number counts as keeping the first answer (`after_source: "turn1"`):
the model was asked to verify, and saying "the solution is correct" without restating it is not a
change. How often that happened is in the summary (`after_from_turn1`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mathtune.data.gsm8k import Problem, load_gsm8k
from mathtune.io import JsonlAppender, atomic_write_json
from mathtune.tasks.common import RECORDS, SUMMARY, acc_entry, existing_summary, get_model, ids_sha, prepare_output

VERIFY_PROMPT_VERSION = 1
VERIFY_PROMPT = (
    "Check your solution step by step. If you find a mistake, correct it. "
    "Then give the final answer as 'The final answer is N.'"
)
GSM8K_HUB = "openai/gsm8k"

Messages = list[dict[str, str]]
# Chats in, one completion per chat out (greedy). The real one wraps mathtune.generate's backend;
# tests pass a fake.
ChatGenerate = Callable[[list[Messages]], list[str]]


def first_turn(question: str) -> Messages:
    return [{"role": "user", "content": question}]


def second_turn(question: str, first_answer: str) -> Messages:
    """The verification chat: the question, the model's own answer, then the request to check it."""
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": VERIFY_PROMPT},
    ]


def _score(text: str, gold: str) -> tuple[str | None, bool]:
    from mathtune.data.extraction import answers_match, extract_flexible

    pred = extract_flexible(text)
    return pred, answers_match(pred, gold)


def selfverify_records(problems: list[Problem], generate: ChatGenerate) -> list[dict[str, Any]]:
    """Run both turns for `problems` and return one record per problem."""
    answers1 = generate([first_turn(p.question) for p in problems])
    answers2 = generate([second_turn(p.question, a) for p, a in zip(problems, answers1, strict=True)])
    out = []
    for p, a1, a2 in zip(problems, answers1, answers2, strict=True):
        before, ok_before = _score(a1, p.answer)
        after, ok_after = _score(a2, p.answer)
        source = "turn2"
        if after is None:
            after, ok_after, source = before, ok_before, "turn1"
        out.append(
            {
                "id": p.id,
                "question": p.question,
                "gold": p.answer,
                "turn1": a1,
                "turn2": a2,
                "before": before,
                "after": after,
                "correct_before": ok_before,
                "correct_after": ok_after,
                "after_source": source,
            }
        )
    return out


def summarize(records: list[dict], *, model: str, adapter: str | None, settings: dict) -> dict[str, Any]:
    from mathtune.analysis.stats import mcnemar_exact
    from mathtune.data.extraction import normalize_number

    n = len(records)
    r2w = sum(r["correct_before"] and not r["correct_after"] for r in records)
    w2r = sum(not r["correct_before"] and r["correct_after"] for r in records)
    changed = sum(normalize_number(r["before"]) != normalize_number(r["after"]) for r in records)
    return {
        "task": "gsm8k_selfverify",
        "model": model,
        "adapter": adapter,
        "n": n,
        "before": acc_entry(sum(bool(r["correct_before"]) for r in records), n),
        "after": acc_entry(sum(bool(r["correct_after"]) for r in records), n),
        "right_to_wrong": r2w,
        "wrong_to_right": w2r,
        "changed": changed,
        "mcnemar_p": mcnemar_exact(w2r, r2w),
        "after_from_turn1": sum(r["after_source"] == "turn1" for r in records),
        "settings": settings,
    }


def hf_chat_generate(
    model: Any, tokenizer: Any, *, max_new_tokens: int, batch_size: int, engine: str = "auto"
) -> ChatGenerate:
    """Greedy chat generation through mathtune.generate's HF backend (decode path `engine`), with the
    `chat` style's stops."""
    from mathtune.generate.base import make_backend
    from mathtune.prompts import stop_sequences

    backend = make_backend("hf", model=model, tokenizer=tokenizer, batch_size=batch_size, engine=engine)
    stop = stop_sequences("chat", tokenizer)

    def generate(chats: list[Messages]) -> list[str]:
        prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in chats]
        gens = backend.generate(
            prompts, n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop=stop, seeds=[0] * len(prompts)
        )
        return [g[0].text for g in gens]

    return generate


def evaluate_selfverify(
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
    max_new_tokens: int = 256,
    engine: str = "auto",
    generate: ChatGenerate | None = None,
) -> dict[str, Any]:
    """GSM8K test (first `limit` items) with a self-verification turn; records.jsonl is resumable.

    `engine` = the hf decode path; as in evaluate_gsm8k it is not part of the settings (the engines are
    meant to give transformers' greedy text), so a run resumes across engines."""
    local = Path("..") / "shared" / "data" / "gsm8k"
    data = data or (str(local) if local.exists() else GSM8K_HUB)
    problems = load_gsm8k(data, "test", limit=limit)
    settings = {
        "task": "gsm8k_selfverify",
        "data": data,
        "split": "test",
        "limit": limit,
        "prompt": "chat",
        "verify_prompt": VERIFY_PROMPT,
        "verify_prompt_version": VERIFY_PROMPT_VERSION,
        "temperature": 0.0,
        "max_new_tokens": max_new_tokens,
        "headline": "flexible",
        "seed": seed,
        "dtype": dtype,
        "item_ids_sha": ids_sha(p.id for p in problems),
    }
    output = Path(output)
    done = prepare_output(output, settings, overwrite=overwrite)
    if done is None:
        return existing_summary(output)
    todo = [p for p in problems if p.id not in done]
    t0 = time.perf_counter()
    if todo:
        if generate is None:
            lm, tok = get_model(model, adapter=adapter, dtype=dtype, loaded=loaded)
            generate = hf_chat_generate(lm, tok, max_new_tokens=max_new_tokens, batch_size=batch_size, engine=engine)
        # Chunks: both turns of a chunk finish before its records are written, so a kill loses at
        # most one chunk, and the batched backend still sees full batches.
        chunk = max(1, batch_size)
        with JsonlAppender(output / RECORDS) as w:
            for start in range(0, len(todo), chunk):
                for rec in selfverify_records(todo[start : start + chunk], generate):
                    w.write(rec)
                    done[rec["id"]] = rec
                if progress:
                    print(f"selfverify: {min(start + chunk, len(todo))}/{len(todo)} items", flush=True)
    summary = summarize([done[p.id] for p in problems], model=model, adapter=adapter, settings=settings)
    summary["generation_seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(output / SUMMARY, summary)
    return summary
