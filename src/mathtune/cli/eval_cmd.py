"""`mathtune eval`: generation-based evaluation (thin wrapper over mathtune.evaluate.evaluate_gsm8k).

Settings are layered: defaults, then --config, then --set, then the dedicated flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mathtune.cli import app


def build_eval_settings(config: Path | None, sets: list[str] | None, flags: dict[str, Any]):
    """Resolve (cfg, flags) into the keyword arguments of evaluate_gsm8k (minus output/overwrite)."""
    from mathtune.config import load_config, parse_overrides

    overrides = parse_overrides(sets)
    model_flags = {k: flags.pop(k) for k in ("spec", "dtype") if flags.get(k) is not None}
    if model_flags:
        overrides.setdefault("model", {}).update(model_flags)
    if flags.get("seed") is not None:
        overrides["seed"] = flags.pop("seed")
    eval_flags = {k: v for k, v in flags.items() if v is not None}
    if eval_flags:
        overrides.setdefault("eval", {}).update(eval_flags)
    cfg = load_config(config, overrides or None)  # validates, e.g. samples > 1 needs temperature > 0
    e = cfg.eval
    decoding = dict(limit=e.limit, samples=e.samples, temperature=e.temperature, top_p=e.top_p)
    return cfg, {**cfg.gsm8k_eval_kwargs(), **decoding}


def _fmt(block: dict[str, Any] | None) -> str:
    if not block or block.get("acc") is None:
        return "n/a"
    return f"{block['acc']:.3f} [{block['ci_low']:.3f}, {block['ci_high']:.3f}] ({block['correct']}/{block['n']})"


@app.command("eval")
def eval_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for records.jsonl and summary.json.")],
    model: Annotated[str | None, typer.Option("--model", help="Model spec: alias, local dir, .gguf or Hub id.")] = None,
    adapter: Annotated[Path | None, typer.Option("--adapter", help="LoRA adapter directory to evaluate.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="GSM8K directory, JSONL file or Hub id.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split to evaluate (default test).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="First N items of the split.")] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Prompt style: chat, cot-8shot, cot-8shot-multiturn, zero-shot-cot.")
    ] = None,
    samples: Annotated[int | None, typer.Option("--samples", help="Samples per item (>1: self-consistency).")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="0 = greedy.")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="Generation length cap.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Sequences decoded together.")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="hf or vllm.")] = None,
    engine: Annotated[
        str | None, typer.Option("--engine", help="hf decode path: auto, fast (Llama family) or transformers.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed.")] = None,
    headline: Annotated[str | None, typer.Option("--headline", help="strict or flexible.")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="auto, bf16, fp16 or fp32.")] = None,
    task: Annotated[str, typer.Option("--task", help="gsm8k, or another task of mathtune.tasks.")] = "gsm8k",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Run config YAML.")] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config value: section.key=value (repeatable).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an evaluation with other settings.")] = False,
    compare: Annotated[
        Path | None, typer.Option("--compare", help="Another summary.json: refuse if its settings differ, else diff.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """Evaluate a model (optionally a LoRA adapter on it) by generation: exact match of the final answer."""
    from mathtune.evaluate import compare_summaries, evaluate_gsm8k
    from mathtune.io import read_json

    flags = dict(
        spec=model, dtype=dtype, seed=seed, data=data, split=split, limit=limit, prompt=prompt, samples=samples,
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size,
        backend=backend, engine=engine, headline=headline,
    )  # fmt: skip
    cfg, kw = build_eval_settings(config, sets, flags)
    ad = str(adapter) if adapter is not None else None
    if task != "gsm8k":
        from mathtune.tasks import evaluate_task

        summary = evaluate_task(
            task, model=kw["model"], adapter=ad, data=data, limit=kw["limit"], output=output,
            batch_size=kw["batch_size"], dtype=kw["dtype"], seed=kw["seed"], overwrite=overwrite,
            progress=not quiet, engine=kw["engine"],
        )  # fmt: skip
        print(f"{task}: n={summary.get('n')} summary: {output / 'summary.json'}")
        return
    summary = evaluate_gsm8k(**kw, adapter=ad, output=output, overwrite=overwrite, progress=not quiet)
    head = summary["headline"]
    print(f"accuracy ({head}): {_fmt(summary['accuracy'][head])}")
    other = "strict" if head == "flexible" else "flexible"
    print(f"accuracy ({other}): {_fmt(summary['accuracy'][other])}")
    if summary.get("self_consistency"):
        sc = summary["self_consistency"]
        print(f"maj@{sc['k']}: {_fmt(sc['maj_at_k'])}; pass@{sc['k']}: {_fmt(sc['pass_at_k'])}")
    tps = summary.get("tokens_per_second")
    print(
        f"n={summary['n']}, truncated {summary['truncation_rate']:.1%}, {tps:.0f} generated tok/s"
        if tps
        else f"n={summary['n']}"
    )
    print(f"records: {output / 'records.jsonl'}\nsummary: {output / 'summary.json'}")
    if compare is not None:
        other_summary = read_json(compare)
        compare_summaries(summary, other_summary)
        a, b = summary["accuracy"][head]["acc"], other_summary["accuracy"][head]["acc"]
        print(f"vs {compare}: {a:.3f} vs {b:.3f} (difference {a - b:+.3f}, same settings and items)")
