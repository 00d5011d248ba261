"""Report sections that interpret the results: errors, references, conclusions, appendix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mathtune.report.artifacts import RunArtifacts
from mathtune.report.format import H, L, P, T, acc_ci, fnum, pct, pval


def section_errors(a: RunArtifacts, ctx: dict[str, Any], plots: dict[str, Path]) -> list[dict[str, Any]]:
    from mathtune.analysis.errors import CATEGORY_LABELS, CATEGORY_ORDER, analyze_errors
    from mathtune.analysis.steps import accuracy_by_steps
    from mathtune.report import plots as P_

    headline = ctx.get("headline", "flexible")
    runs = {n: a.evals[n] for n in ("base", "tuned") if n in a.evals and a.evals[n].records}
    if not runs:
        return [P("Error analysis: not run (no evaluation records).")]
    analyses = {n: analyze_errors(e.records, headline) for n, e in runs.items()}
    ctx["errors"] = analyses
    rows = []
    for cat in CATEGORY_ORDER:
        row = [CATEGORY_LABELS[cat]]
        for n in runs:
            ea = analyses[n]
            row.append(f"{ea.counts[cat]} ({pct(ea.rates[cat])})")
        rows.append(row)
    rows.append(["all wrong answers"] + [f"{analyses[n].n_wrong} of {analyses[n].n}" for n in runs])
    blocks = [
        P(
            f"Every wrong {headline} answer gets one category: the first rule that applies, in the order of the "
            "table (rules in the appendix). Rates are shares of the wrong answers."
        ),
        T(["category"] + [f"{n} (count, share)" for n in runs], rows),
    ]
    plots["errors"] = P_.category_bars(
        [CATEGORY_LABELS[c] for c in CATEGORY_ORDER],
        {n: [analyses[n].counts[c] for c in CATEGORY_ORDER] for n in runs},
        a.run_dir / "plots" / "errors.png",
        title="Error categories of wrong answers",
    )
    blocks.append({"kind": "img", "name": "errors", "alt": "Error categories, base vs tuned"})
    show = "tuned" if "tuned" in analyses else "base"
    blocks.append(H(f"Examples ({show} model)"))
    any_ex = False
    for cat in CATEGORY_ORDER:
        for i, ex in enumerate(analyses[show].examples.get(cat, [])[:3], 1):
            any_ex = True
            blocks.append(
                {
                    "kind": "example",
                    "title": f"{CATEGORY_LABELS[cat]} — example {i} (item {ex.id}; gold {ex.gold}, model "
                    f"{ex.answer if ex.answer is not None else 'no answer'})",
                    "fields": [
                        ("Where it went wrong", ex.detail),
                        ("Question", ex.question),
                        ("Gold solution", ex.gold_solution),
                        ("Model solution", ex.model_solution),
                    ],
                }
            )
    if not any_ex:
        blocks.append(P("No wrong answers to show."))
    blocks.append(H("Accuracy by number of steps in the gold solution"))
    by = {n: accuracy_by_steps(e.records, headline) for n, e in runs.items()}
    ctx["steps"] = by
    labels = sorted({b.label for rows_ in by.values() for b in rows_}, key=lambda s: int(s.rstrip("+")))
    srows = []
    for lab in labels:
        row = [lab]
        for n in runs:
            b = next((x for x in by[n] if x.label == lab), None)
            row.append("n/a" if b is None else f"{pct(b.acc)} [{pct(b.ci_low)}, {pct(b.ci_high)}] ({b.correct}/{b.n})")
        srows.append(row)
    blocks.append(
        P(
            "Steps = calculator annotations in the gold solution (GSM8K marks each computation with one); "
            "more steps means longer multi-step arithmetic."
        )
    )
    blocks.append(T(["steps"] + [f"{n} accuracy [95% CI]" for n in runs], srows))
    series = {
        n: [next(((x.acc, x.ci_low, x.ci_high) for x in by[n] if x.label == lab), None) for lab in labels] for n in runs
    }
    plots["steps"] = P_.grouped_bars(
        labels,
        series,
        a.run_dir / "plots" / "accuracy_by_steps.png",
        title=f"{headline} accuracy by gold solution steps (95% CI)",
        xlabel="steps in gold solution",
    )
    blocks.append({"kind": "img", "name": "steps", "alt": "Accuracy by number of steps"})
    return blocks


def section_references(a: RunArtifacts, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    from mathtune.references import references_for

    hub_id, refs = references_for(a.cfg.model.spec)
    base = a.evals.get("base")
    ours = None
    if base:
        s, h = base.summary, base.summary.get("headline", "flexible")
        st = s.get("settings") or {}
        ours = (
            f"{acc_ci((s.get('accuracy') or {}).get(h))}: {st.get('prompt', '?')} prompt (0-shot unless a few-shot "
            f"prompt is named), greedy, {h} extraction, first {st.get('limit') or 'all'} '{st.get('split', '?')}' items"
        )
    if not refs:
        return [
            P(
                f"No published GSM8K numbers are on file for this model ({hub_id or a.cfg.model.spec}); "
                "see mathtune/references/gsm8k.yaml."
            ),
            P(f"Ours (base model): {ours or 'not run'}."),
        ]
    rows = [
        [f"{r.value:.2f}%", r.metric, r.protocol, r.harness, r.source + (f" ({r.note})" if r.note else "")]
        for r in refs
    ]
    blocks = [
        P(f"Published GSM8K numbers for {hub_id} (the base model of this run):"),
        T(["published", "metric", "protocol", "harness", "source"], rows),
        P(f"Ours (base model, before fine-tuning): {ours or 'not run'}."),
    ]
    why = (
        "They may differ because the protocols differ: number of few-shot examples and chain-of-thought "
        "exemplars, answer extraction (strict marker vs. last number), the harness's prompt template and "
        "stop sequences, sampling (maj@1 vs. greedy), and the number of items (we evaluate a subset, so our "
        "interval is wide)."
    )
    if a.cfg.model.spec == "smollm2-135m":
        why += (
            " Also, the embedded smollm2-135m weights are dequantized from a 4-bit GGUF (Q4_1) file, not the "
            "original bf16 checkpoint."
        )
    blocks.append(P(why))
    return blocks


def section_conclusions(a: RunArtifacts, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    items = []
    base, tuned = a.evals.get("base"), a.evals.get("tuned")
    h = ctx.get("headline", "flexible")
    if base and tuned:
        ab = (base.summary.get("accuracy") or {}).get(h) or {}
        at = (tuned.summary.get("accuracy") or {}).get(h) or {}
        pc = ctx.get("paired")
        if ab and at:
            sig = "n/a"
            if pc:
                sig = "significant at the 5% level" if pc["p"] < 0.05 else "not significant at the 5% level"
            items.append(
                f"GSM8K ({h}): tuned {pct(at.get('acc'))} vs base {pct(ab.get('acc'))} "
                f"({100 * (at['acc'] - ab['acc']):+.1f} points on {at.get('n')} items; McNemar "
                f"{pval(pc['p']) if pc else 'n/a'}): {sig}."
            )
    else:
        items.append("GSM8K base-vs-tuned comparison: not run.")
    cs = ctx.get("curves")
    if cs is not None:
        t = cs.val_trend or cs.train_trend
        if cs.val is not None:
            items.append(
                f"Validation loss {cs.val.start:.3f} → {cs.val.end:.3f} (best {cs.val.best:.3f} at step "
                f"{cs.val.best_step}; {fnum(cs.val.pct_decrease, 3)}% lower at the end)."
            )
        if t is not None:
            items.append(
                f"{t.series.capitalize()} over the final window: slope {t.slope:.3g}/step, 95% CI "
                f"[{t.ci_low:.3g}, {t.ci_high:.3g}] → {t.verdict}. {cs.recommendation}"
            )
    ea = (ctx.get("errors") or {}).get("tuned")
    if ea and ea.n_wrong:
        from mathtune.analysis.errors import CATEGORY_LABELS

        most = max(ea.counts.values())
        top = [CATEGORY_LABELS[k] for k, v in ea.counts.items() if v == most]
        items.append(
            f"Most common error of the tuned model: {' / '.join(top)} ({most} of {ea.n_wrong} wrong answers, "
            f"{pct(most / ea.n_wrong)}{' each' if len(top) > 1 else ''})."
        )
    for g in ctx.get("general") or []:
        word = "dropped" if g["change"] < 0 else "rose" if g["change"] > 0 else "did not change"
        items.append(f"{g['task']} ({g['metric']}) {word} by {abs(100 * g['change']):.1f} points ({pval(g['p'])}).")
    cost = ctx.get("cost")
    if cost is not None:
        items.append(f"Compute: {cost.text}.")
    measured = {t.split("-", 1)[1] for t in a.evals if "-" in t}
    prompt = a.cfg.eval.prompt
    nxt = [
        ("ARC (arc_easy, arc_challenge)", bool(measured & {"arc_easy", "arc_challenge"})),
        ("MMLU", "mmlu" in measured),
        ("HellaSwag", "hellaswag" in measured),
        ("chain-of-thought few-shot prompting (eval.prompt cot-8shot)", prompt.startswith("cot")),
        ("self-consistency (maj@K)", "sc" in measured),
        ("multi-turn reasoning (eval.prompt cot-8shot-multiturn)", prompt == "cot-8shot-multiturn"),
        ("GSM-Symbolic robustness", "gsm_symbolic" in measured),
        ("self-verification", "gsm8k_selfverify" in measured),
    ]
    steps_ = [
        f"{name}: {'measured in this run (see above)' if done else 'not measured in this run'}." for name, done in nxt
    ]
    return [L(items), H("Next steps"), L(steps_)]


APPENDIX_METRICS = [
    (
        "strict accuracy",
        "the answer is taken only from an explicit final-answer marker ('#### N', 'The answer is "
        "N', '\\boxed{N}'); no marker counts as wrong.",
    ),
    ("flexible accuracy", "the answer is the last number in the generation."),
    (
        "exact match",
        "the extracted answer equals the gold answer numerically after normalisation (commas, "
        "'$', trailing zeros removed).",
    ),
    ("95% CI", "Wilson score interval for a binomial proportion."),
    (
        "McNemar exact test",
        "two-sided binomial test on the items that changed between base and tuned "
        "(fixed vs broken); items right or wrong in both carry no information about the difference.",
    ),
    (
        "maj@K",
        "sample K answers (temperature above 0); the item is right when the most frequent extracted answer "
        "is right (ties: the answer seen first).",
    ),
    ("pass@K", "right when any of the K samples is right; an upper bound, not an accuracy a user gets."),
    ("mean agreement", "average share of the K samples that agree with the majority answer."),
    ("invalid rate", "share of items where the extraction found no answer at all."),
    ("truncation rate", "share of generations that hit max_new_tokens (finish_reason 'length')."),
    (
        "mean token accuracy",
        "teacher-forced next-token agreement on the answer tokens during training "
        "(TRL's definition); it measures how well the model predicts the gold solution token by token, "
        "NOT whether it solves problems.",
    ),
    (
        "loss",
        "mean cross-entropy on the completion (answer) tokens; validation loss on the held-out "
        "validation split, step 0 before any update.",
    ),
    (
        "trend",
        "OLS slope of the loss over the final window of logged points with its confidence interval; "
        "'still improving' only when the whole interval is below zero.",
    ),
    ("cost", "price per hour × device hours (sum of stage wall times)."),
]


def section_appendix() -> list[dict[str, Any]]:
    from mathtune.analysis.errors import CATEGORY_LABELS, CATEGORY_ORDER, CATEGORY_RULES

    return [
        H("Metric definitions"),
        T(["metric", "definition"], [[k, v] for k, v in APPENDIX_METRICS]),
        H("Error-category rules (applied in this order; the first match wins)"),
        T(
            ["#", "category", "rule"],
            [[i, CATEGORY_LABELS[c], CATEGORY_RULES[c]] for i, c in enumerate(CATEGORY_ORDER, 1)],
        ),
    ]
