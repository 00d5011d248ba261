"""Report sections about the run itself: overview, training, task accuracy, extra tasks.

Each section function returns a list of blocks (see mathtune.report.format); `ctx` collects the
figures later sections (conclusions) quote, so a number is computed once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mathtune.report.artifacts import RunArtifacts
from mathtune.report.format import H, L, P, T, acc_ci, fnum, paired, pct, pval

MC_TASKS = ("arc_easy", "arc_challenge", "mmlu", "hellaswag")


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, ", ".join(map(str, v)) if isinstance(v, list) else v))
    return out


def _stage_rows(stages: dict[str, Any] | None) -> list[list[Any]]:
    from mathtune.analysis.cost import format_seconds

    rows = []
    for name, st in ((stages or {}).get("stages") or {}).items():
        st = st if isinstance(st, dict) else {}
        rows.append([name, st.get("status", "?"), format_seconds(st.get("seconds"))])
    return rows


def section_overview(a: RunArtifacts, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    from mathtune.analysis.cost import compute_cost, format_seconds

    cfg, ts = a.cfg, a.train_summary or {}
    base = a.evals.get("base")
    n_eval = base.summary.get("n") if base else None
    lora = cfg.lora
    loss = "loss on the answer (completion) tokens only" if cfg.data.completion_only_loss else "loss on all tokens"
    blocks = [
        T(
            ["", ""],
            [
                ["Model", f"{cfg.model.spec}" + (f" (Hub id {ctx['hub_id']})" if ctx.get("hub_id") else "")],
                ["Data set", f"GSM8K from {cfg.data.path}; evaluation on {cfg.eval_data} split '{cfg.eval.split}'"],
                [
                    "Method",
                    f"LoRA (r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, bias={lora.bias}, "
                    f"targets={lora.target_modules}), {loss}",
                ],
                [
                    "Split sizes",
                    f"n_train={fnum(ts.get('n_train'))}, n_val={fnum(ts.get('n_val'))}, n_eval={fnum(n_eval)}",
                ],
                [
                    "Hardware",
                    f"{ts.get('device_name') or (base.summary.get('device') if base else None) or 'n/a'} "
                    f"(device {ts.get('device') or 'n/a'}, precision {ts.get('precision') or 'n/a'})",
                ],
                [
                    "Tokens trained",
                    f"{fnum(ts.get('tokens_trained'))} in {format_seconds(ts.get('train_seconds'))} "
                    f"({fnum(ts.get('tokens_per_second'), 4)} tokens/s)"
                    if ts
                    else "not run",
                ],
                [
                    "Trainable parameters",
                    f"{fnum(ts.get('trainable_params'))} of {fnum(ts.get('total_params'))}" if ts else "n/a",
                ],
            ],
        )
    ]
    cost = compute_cost(
        price_per_hour=cfg.report.price_per_hour,
        stages=a.stages,
        train_summary=a.train_summary,
        eval_summaries=[e.summary for e in a.evals.values()],
        device_label=cfg.report.device_label,
    )
    ctx["cost"] = cost
    blocks.append(P(f"Cost: {cost.text}."))
    rows = _stage_rows(a.stages)
    blocks.append(H("Wall time per stage"))
    blocks.append(
        T(["stage", "status", "wall time"], rows) if rows else P("No stages.json: stage timing not recorded.")
    )
    blocks.append(H("Hyperparameters (config.yaml)"))
    blocks.append(T(["key", "value"], [[k, v] for k, v in _flatten(cfg.model_dump(mode="json"))]))
    return blocks


def section_training(a: RunArtifacts, ctx: dict[str, Any], plots: dict[str, Path]) -> list[dict[str, Any]]:
    from mathtune.analysis.curves import summarize_curves
    from mathtune.report import plots as P_

    if not a.train_rows and not a.eval_rows:
        return [P("Training: not run (no metrics.jsonl in the run directory).")]
    ts = a.train_summary or {}
    early = bool(ts.get("early_stopped"))
    cs = summarize_curves(a.train_rows, a.eval_rows, trend_window=a.cfg.report.trend_window, early_stopped=early)
    ctx["curves"] = cs
    rows = []
    for s in (cs.train, cs.val):
        if s is None:
            continue
        rows.append(
            [
                s.name,
                f"{s.start:.4f} (step {s.start_step})",
                f"{s.best:.4f} (step {s.best_step})",
                f"{s.end:.4f} (step {s.end_step})",
                "n/a" if s.pct_decrease is None else f"{s.pct_decrease:.1f}%",
                "n/a" if s.pct_decrease_best is None else f"{s.pct_decrease_best:.1f}%",
            ]
        )
    blocks = [
        T(["series", "start", "best", "end", "decrease start→end", "decrease start→best"], rows),
        P(
            "Validation loss at step 0 is measured before any update; the first training loss is the "
            "mean over the first logging interval."
        ),
    ]
    plots["learning_curve"] = P_.learning_curve(a.train_rows, a.eval_rows, a.run_dir / "plots" / "learning_curve.png")
    blocks.append(
        {"kind": "img", "name": "learning_curve", "alt": "Learning curve: train and validation loss, learning rate"}
    )
    for t in (cs.val_trend, cs.train_trend):
        if t is None:
            continue
        blocks.append(
            P(
                f"Trend of the {t.series} over the final window ({t.n} logged points, steps {t.first_step}–"
                f"{t.last_step}; window = last {a.cfg.report.trend_window:.0%} of points, at least 3): slope "
                f"{t.slope:.3g} per step, {t.confidence:.0%} CI [{t.ci_low:.3g}, {t.ci_high:.3g}] → {t.verdict}."
            )
        )
    if cs.val_trend is None and cs.train_trend is None:
        blocks.append(P("Trend: too few logged points for a trend (need at least 3)."))
    blocks.append(P(f"Recommendation: {cs.recommendation}"))
    patience = a.cfg.train.early_stopping_patience
    if patience is None:
        es = "Early stopping: off."
    elif early:
        es = (
            f"Early stopping fired (patience {patience} evaluations) at step "
            f"{fnum(ts.get('early_stopped_at') or ts.get('global_step'))}; "
            f"best step {fnum(ts.get('best_step'))} with validation loss {fnum(ts.get('best_eval_loss'))}; "
            "the adapter kept is that best checkpoint."
        )
    elif ts:
        es = (
            f"Early stopping (patience {patience}) did not fire: training ran {fnum(ts.get('global_step'))} "
            f"optimizer steps, {fnum(ts.get('epochs_done'))} epoch(s)."
        )
    else:
        es = "Early stopping: unknown (training did not finish: no train_summary.json)."
    blocks.append(P(es))
    if cs.token_acc:
        v = f"; validation {pct(cs.val_token_acc[0])} → {pct(cs.val_token_acc[1])}" if cs.val_token_acc else ""
        blocks.append(
            P(
                f"Mean token accuracy (teacher-forced next-token agreement on answer tokens, NOT task "
                f"accuracy): train {pct(cs.token_acc[0])} → {pct(cs.token_acc[1])}{v}."
            )
        )
    return blocks


def _settings_differ(s1: dict[str, Any], s2: dict[str, Any]) -> list[str]:
    a, b = s1.get("settings") or {}, s2.get("settings") or {}
    return sorted(k for k in set(a) | set(b) if k not in ("model", "adapter") and a.get(k) != b.get(k))


def _weights_note(base, tuned) -> str:
    """', weights in <dtype>' as the evaluations ran (summary weights_dtype); greedy answers depend on
    it (bf16 changes most texts of the embedded model), so a mismatch is said outright."""
    got = {name: e.summary.get("weights_dtype") for name, e in (("base", base), ("tuned", tuned)) if e is not None}
    known = {k: v for k, v in got.items() if v}
    if not known:
        return ""
    if len(set(known.values())) == 1 and len(known) == len(got):
        return f", weights in {next(iter(known.values()))}"
    parts = ", ".join(f"{k} {v or 'unknown'}" for k, v in got.items())
    return f", weights: {parts} (NOT the same precision: the comparison mixes them)"


def section_accuracy(a: RunArtifacts, ctx: dict[str, Any], plots: dict[str, Path]) -> list[dict[str, Any]]:
    from mathtune.report import plots as P_

    base, tuned = a.evals.get("base"), a.evals.get("tuned")
    if base is None and tuned is None:
        return [P("GSM8K evaluation: not run (no eval/base or eval/tuned summary).")]
    headline = (base or tuned).summary.get("headline", "flexible")
    ctx["headline"] = headline
    hdr = ["model", "n"]
    for m in ("strict", "flexible"):
        hdr.append(f"{m} accuracy [95% CI]" + (" (headline)" if m == headline else ""))
    hdr += ["invalid (strict / flexible)", "truncated"]
    rows = []
    for name, e in (("base", base), ("tuned", tuned)):
        if e is None:
            rows.append([name, "not run", "", "", "", ""])
            continue
        s = e.summary
        acc = s.get("accuracy") or {}
        inv = s.get("invalid_rate") or {}
        rows.append(
            [
                name,
                s.get("n"),
                acc_ci(acc.get("strict")),
                acc_ci(acc.get("flexible")),
                f"{pct(inv.get('strict'))} / {pct(inv.get('flexible'))}",
                pct(s.get("truncation_rate")),
            ]
        )
    settings = (base or tuned).summary.get("settings") or {}
    blocks = [
        P(
            f"Exact match of the generated final answer against the gold answer, on the first "
            f"{settings.get('limit') or 'all'} items of the '{settings.get('split', '?')}' split; prompt "
            f"'{settings.get('prompt', '?')}', temperature {settings.get('temperature', '?')}, max_new_tokens "
            f"{settings.get('max_new_tokens', '?')}{_weights_note(base, tuned)}. Intervals: 95% Wilson."
        ),
        T(hdr, rows),
    ]
    series = {}
    for name, e in (("base", base), ("tuned", tuned)):
        if e is not None:
            acc = e.summary.get("accuracy") or {}
            series[name] = [
                (acc[m]["acc"], acc[m]["ci_low"], acc[m]["ci_high"]) if acc.get(m) else None
                for m in ("strict", "flexible")
            ]
    plots["accuracy"] = P_.grouped_bars(
        ["strict", "flexible"],
        series,
        a.run_dir / "plots" / "accuracy.png",
        title="GSM8K accuracy (95% Wilson CI)",
        xlabel="answer extraction",
    )
    blocks.append({"kind": "img", "name": "accuracy", "alt": "GSM8K accuracy, base vs tuned"})
    if base and tuned:
        diff = _settings_differ(base.summary, tuned.summary)
        if diff:
            blocks.append(
                P(
                    f"WARNING: base and tuned were evaluated with different settings ({', '.join(diff)}); "
                    "the paired comparison below is not valid."
                )
            )
        pc = paired(base.records, tuned.records, f"correct_{headline}")
        ctx["paired"] = pc
        if pc:
            blocks.append(H("Paired comparison (same items)"))
            blocks.append(
                T(
                    [
                        "items",
                        "right in both",
                        "fixed (wrong→right)",
                        "broken (right→wrong)",
                        "wrong in both",
                        "McNemar exact",
                    ],
                    [[pc["n"], pc["both_right"], pc["fixed"], pc["broken"], pc["both_wrong"], pval(pc["p"])]],
                )
            )
            sig = "significant" if pc["p"] < 0.05 else "not significant"
            blocks.append(
                P(
                    f"McNemar's exact test on the {pc['fixed'] + pc['broken']} discordant items: {pval(pc['p'])} "
                    f"({sig} at the 5% level)."
                )
            )
        else:
            blocks.append(P("Paired comparison: not possible (no per-item records shared by base and tuned)."))
    blocks.append(H("Self-consistency"))
    blocks.extend(_self_consistency(a))
    return blocks


def _self_consistency(a: RunArtifacts) -> list[dict[str, Any]]:
    rows = []
    for name in ("base", "tuned"):
        e = a.evals.get(f"{name}-sc")
        sc = (e.summary.get("self_consistency") if e else None) or None
        if not sc:
            continue
        k = sc.get("k")
        rows.append(
            [
                name,
                e.summary.get("n"),
                k,
                acc_ci(sc.get("maj_at_k")),
                acc_ci(sc.get("pass_at_k")),
                acc_ci(sc.get("first_sample")),
                pct(sc.get("mean_agreement")),
            ]
        )
    if not rows:
        return [P("Self-consistency: not run (set eval.self_consistency to K of 2 or more to measure maj@K).")]
    return [
        T(["model", "n", "K", "maj@K", "pass@K", "first sample", "mean agreement"], rows),
        P(
            "maj@K: the majority answer of K samples is right; pass@K: at least one of K is right "
            "(an upper bound, not a usable accuracy); first sample: a single sampled answer."
        ),
    ]


def _task_key(summary: dict[str, Any], records: list[dict[str, Any]]) -> tuple[str, str]:
    headline = summary.get("headline") or "acc"
    return headline, ("correct_norm" if headline == "acc_norm" else "correct")


def section_general(a: RunArtifacts, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    rows, notes = [], []
    ctx["general"] = []
    for task in MC_TASKS:
        b, t = a.evals.get(f"base-{task}"), a.evals.get(f"tuned-{task}")
        if b is None and t is None:
            continue
        if b is None or t is None:
            notes.append(f"{task}: only {'base' if b else 'tuned'} was evaluated; no comparison.")
            continue
        metric, key = _task_key(b.summary, b.records)
        ab = (b.summary.get("accuracy") or {}).get(metric)
        at = (t.summary.get("accuracy") or {}).get(metric)
        pc = paired(b.records, t.records, key)
        change = (at["acc"] - ab["acc"]) if ab and at else None
        rows.append(
            [
                task,
                metric,
                acc_ci(ab),
                acc_ci(at),
                "n/a" if change is None else f"{100 * change:+.1f} pp",
                f"{pc['fixed']} / {pc['broken']}" if pc else "n/a",
                pval(pc["p"]) if pc else "n/a",
            ]
        )
        if change is not None:
            direction = "DROP" if change < 0 else ("gain" if change > 0 else "no change")
            sig = "significant" if pc and pc["p"] < 0.05 else "not significant"
            notes.append(
                f"{task}: {direction} of {abs(100 * change):.1f} points ({metric} {pct(ab['acc'])} → "
                f"{pct(at['acc'])}, McNemar {pval(pc['p']) if pc else 'n/a'}, {sig})."
            )
            ctx["general"].append({"task": task, "change": change, "p": pc["p"] if pc else None, "metric": metric})
        for label, e in (("base", b), ("tuned", t)):
            macro, micro = e.summary.get("macro"), e.summary.get("micro")
            if task == "mmlu" and isinstance(macro, dict) and isinstance(micro, dict):
                notes.append(
                    f"mmlu {label} ({len(e.summary.get('subjects') or {})} subjects): {metric} macro average "
                    f"{pct(macro.get(metric))} (each subject weighs the same), micro {pct(micro.get(metric))} "
                    "(each question weighs the same)."
                )
    if not rows and not notes:
        return [P("General ability (ARC, MMLU, HellaSwag): not run (add tasks to eval.tasks, e.g. arc_easy).")]
    blocks = [
        P(
            "Multiple-choice tasks scored by log-likelihood of each choice; a drop is a cost of the fine-tune "
            "and is reported with the same weight as a gain."
        ),
    ]
    if rows:
        blocks.append(
            T(["task", "metric", "base [95% CI]", "tuned [95% CI]", "change", "fixed / broken", "McNemar exact"], rows)
        )
    if notes:
        blocks.append(L(notes))
    return blocks


def section_symbolic(a: RunArtifacts) -> list[dict[str, Any]]:
    rows = []
    for name in ("base", "tuned"):
        e = a.evals.get(f"{name}-gsm_symbolic")
        rob = (e.summary.get("robustness") if e else None) or None
        if not rob:
            continue
        gci = rob.get("gap_ci") or [None, None]
        rows.append(
            [
                name,
                acc_ci(rob.get("original")),
                acc_ci(rob.get("variants")),
                f"{100 * rob['gap']:+.1f} pp [{fnum(None if gci[0] is None else 100 * gci[0], 3)}, "
                f"{fnum(None if gci[1] is None else 100 * gci[1], 3)}]"
                if rob.get("gap") is not None
                else "n/a",
                rob.get("n_templates"),
                rob.get("n_variants"),
            ]
        )
    if not rows:
        return [P("GSM-Symbolic robustness: not run (add gsm_symbolic to eval.tasks).")]
    return [
        P(
            "Accuracy on original items vs. variants with changed names and numbers (GSM-Symbolic templates); "
            "gap = original − variants, in points, with its 95% interval."
        ),
        T(["model", "original", "variants", "gap", "templates", "variants (n)"], rows),
    ]


def section_selfverify(a: RunArtifacts) -> list[dict[str, Any]]:
    rows = []
    for name in ("base", "tuned"):
        e = a.evals.get(f"{name}-gsm8k_selfverify")
        if e is None:
            continue
        s = e.summary
        rows.append(
            [
                name,
                s.get("n"),
                acc_ci(s.get("before")),
                acc_ci(s.get("after")),
                s.get("wrong_to_right"),
                s.get("right_to_wrong"),
                s.get("changed"),
            ]
        )
    if not rows:
        return [P("Self-verification: not run (add gsm8k_selfverify to eval.tasks).")]
    return [
        P("The model is asked to check its own answer and may revise it; accuracy before and after the check."),
        T(["model", "n", "before", "after", "wrong→right", "right→wrong", "changed"], rows),
    ]
