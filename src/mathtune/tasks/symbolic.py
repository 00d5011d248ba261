"""GSM-Symbolic robustness: accuracy on template variants vs on the GSM8K test items they come from.

GSM-Symbolic (Mirzadeh et al. 2024, arXiv:2410.05229) turned 100 GSM8K test questions into templates
whose names and numbers can be resampled. The `reasoning-gym` package (PyPI) ships those templates
as Python generators `generate_0` .. `generate_99` (85 of them marked usable in its `tasks_ok`), and
generates variants offline from a `random.Random`.

reasoning-gym does not record which GSM8K test item a template came from. TEMPLATE_TO_GSM8K below
was built by matching each template's fixed wording (the words shared by three of its variants)
against every GSM8K test question by word-set Jaccard similarity: every template's best match
scores 0.50-1.00 and beats the runner-up clearly (lowest margin: template 10, 0.667 vs 0.625, checked
by reading both questions). tests/test_tasks_symbolic.py re-derives the table from the data. At run
time each original is checked again against its variants, so a GSM8K file in another order is refused.

The comparison is paired by template: per template, o = original correct (0/1) and v = fraction of its
variants correct; gap = mean(o) - mean(v) (positive: the model does worse on variants). The interval
is a percentile bootstrap over templates (resampling templates with replacement keeps each original
with its own variants), 2,000 resamples, seeded.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from mathtune.data.gsm8k import Problem, load_gsm8k
from mathtune.errors import UserError
from mathtune.io import atomic_write_json, read_json, read_jsonl
from mathtune.tasks.common import RECORDS, SUMMARY, acc_entry

VARIANTS_PER_TEMPLATE = 4
BOOTSTRAP_RESAMPLES = 2000
GSM8K_HUB = "openai/gsm8k"
MIN_SIMILARITY = 0.3  # original vs one variant; the real pairs score 0.45+ (see the test)

# reasoning-gym generator index -> 0-based line index in the GSM8K test split (openai/grade-school-math).
TEMPLATE_TO_GSM8K: dict[int, int] = {
    0: 989,
    1: 930,
    2: 982,
    3: 242,
    4: 469,
    5: 677,
    6: 365,
    7: 99,
    8: 116,
    9: 843,
    10: 496,
    11: 406,
    12: 220,
    13: 1099,
    14: 300,
    15: 1053,
    16: 149,
    17: 955,
    18: 800,
    19: 1264,
    20: 491,
    21: 984,
    22: 265,
    23: 164,
    24: 991,
    25: 43,
    26: 269,
    27: 1165,
    28: 661,
    29: 458,
    30: 740,
    31: 1189,
    32: 1088,
    33: 636,
    34: 1025,
    35: 1239,
    36: 1021,
    37: 1026,
    38: 520,
    39: 364,
    40: 456,
    41: 788,
    42: 266,
    43: 579,
    44: 1111,
    45: 125,
    46: 20,
    47: 158,
    48: 799,
    49: 434,
    50: 1074,
    51: 357,
    52: 546,
    53: 184,
    54: 684,
    55: 232,
    56: 1305,
    57: 918,
    58: 400,
    59: 103,
    60: 1133,
    61: 410,
    62: 921,
    63: 304,
    64: 1141,
    65: 1207,
    66: 107,
    67: 1020,
    68: 858,
    69: 655,
    70: 1247,
    71: 11,
    72: 1268,
    73: 976,
    74: 473,
    75: 480,
    76: 718,
    77: 320,
    78: 1277,
    79: 652,
    80: 728,
    81: 401,
    82: 1063,
    83: 1084,
    84: 554,
    85: 440,
    86: 459,
    87: 737,
    88: 1031,
    89: 1164,
    90: 1223,
    91: 145,
    92: 74,
    93: 432,
    94: 336,
    95: 1023,
    96: 937,
    97: 39,
    98: 1275,
    99: 873,
}


def _reasoning_gym() -> tuple[dict[int, Any], list[int], str]:
    """(generators by index, usable indices, package version), or a UserError saying what to install."""
    try:
        from importlib.metadata import version

        from reasoning_gym.arithmetic.gsm_symbolic import gsm_symbolic as rg
    except ImportError:
        raise UserError(
            "task gsm_symbolic needs the 'reasoning-gym' package: pip install 'mathtune[symbolic]' (or reasoning-gym)"
        ) from None
    ds = rg.GSMSymbolicDataset(rg.GSMSymbolicDatasetConfig(seed=0, size=1))
    return ds.generators, sorted(set(rg.tasks_ok) & set(TEMPLATE_TO_GSM8K)), version("reasoning-gym")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def make_variant(generators: dict[int, Any], template: int, k: int, seed: int) -> Problem:
    # A str seed goes through SHA-512 in random.Random: the same variant on every run and platform.
    ex = generators[template](random.Random(f"{seed}:{template}:{k}"), 1.0)
    return Problem(
        id=f"sym-{template:02d}-{k}",
        question=ex["question"],
        solution=ex["metadata"]["answer_cot"],
        answer=str(ex["answer"]),
    )


def build_items(
    test: list[Problem], *, n_templates: int | None, variants: int, seed: int
) -> tuple[list[Problem], list[Problem], dict[str, Any]]:
    """(originals, variants, meta): a seeded choice of templates, their GSM8K originals and variants."""
    generators, usable, rg_version = _reasoning_gym()
    chosen = sorted(random.Random(seed).sample(usable, k=min(n_templates or len(usable), len(usable))))
    originals, variant_items = [], []
    template_of: dict[str, int] = {}
    for g in chosen:
        idx = TEMPLATE_TO_GSM8K[g]
        if idx >= len(test):
            raise UserError(f"GSM8K test data has {len(test)} items; GSM-Symbolic needs the full test split (1,319)")
        orig = test[idx]
        vs = [make_variant(generators, g, k, seed) for k in range(variants)]
        if jaccard(words(orig.question), words(vs[0].question)) < MIN_SIMILARITY:
            raise UserError(
                f"GSM8K test item {orig.id} is not the original of GSM-Symbolic template {g}: "
                "pass the original GSM8K test split (openai/grade-school-math order)"
            )
        originals.append(orig)
        variant_items.extend(vs)
        template_of[orig.id] = g
        for v in vs:
            template_of[v.id] = g
    meta = {"templates": chosen, "template_of": template_of, "reasoning_gym_version": rg_version}
    return originals, variant_items, meta


def robustness(
    correct: dict[str, bool],
    originals: list[Problem],
    variants: list[Problem],
    template_of: dict[str, int],
    *,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """Original vs variant accuracy and their paired-by-template gap with a bootstrap interval."""
    per_t: dict[int, tuple[int, list[int]]] = {}
    for o in originals:
        per_t[template_of[o.id]] = (int(correct[o.id]), [])
    for v in variants:
        per_t[template_of[v.id]][1].append(int(correct[v.id]))
    pairs = [(o, sum(vs) / len(vs)) for o, vs in per_t.values() if vs]
    n_t = len(pairs)

    def gap_of(sample: list[tuple[int, float]]) -> float:
        return sum(o for o, _ in sample) / len(sample) - sum(v for _, v in sample) / len(sample)

    gap = gap_of(pairs) if pairs else float("nan")
    rng = random.Random(seed)
    boots = sorted(gap_of([pairs[rng.randrange(n_t)] for _ in range(n_t)]) for _ in range(resamples)) if pairs else []
    lo = boots[int(0.025 * (len(boots) - 1))] if boots else float("nan")
    hi = boots[int(round(0.975 * (len(boots) - 1)))] if boots else float("nan")
    return {
        "original": acc_entry(sum(int(correct[o.id]) for o in originals), len(originals)),
        "variants": acc_entry(sum(int(correct[v.id]) for v in variants), len(variants)),
        "gap": gap,
        "gap_ci": [lo, hi],
        "gap_method": f"original minus variant accuracy, paired by template; 95% percentile bootstrap over "
        f"templates ({resamples} resamples)",
        "n_templates": n_t,
        "n_variants": len(variants),
    }


def evaluate_gsm_symbolic(
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
    variants: int = VARIANTS_PER_TEMPLATE,
    max_new_tokens: int = 256,
    engine: str = "auto",
) -> dict[str, Any]:
    """`limit` = number of templates (seeded choice; default all 85), each evaluated as its GSM8K original
    plus `variants` variants, greedy, with the `chat` prompt. `data` = the GSM8K data (test split).
    `engine` = the hf decode path, passed to evaluate_gsm8k (not part of the settings, as there)."""
    data = data or (
        str(Path("..") / "shared" / "data" / "gsm8k")
        if (Path("..") / "shared" / "data" / "gsm8k").exists()
        else GSM8K_HUB
    )
    test = load_gsm8k(data, "test")
    originals, variant_items, meta = build_items(test, n_templates=limit, variants=variants, seed=seed)
    output = Path(output)
    extra_settings = {
        "task": "gsm_symbolic",
        "data": data,
        "limit": limit,
        "limit_unit": "templates",
        "variants_per_template": variants,
        "templates": meta["templates"],
        "reasoning_gym_version": meta["reasoning_gym_version"],
        "seed": seed,
    }
    summary_path = output / SUMMARY
    if summary_path.exists() and not overwrite:
        old = read_json(summary_path)
        if "robustness" in old and old.get("settings", {}).get("symbolic") == extra_settings:
            return old  # finished with the same settings: nothing to do
    # Any other state (partial, other settings) is evaluate_gsm8k's to resume or refuse.
    from mathtune.evaluate import evaluate_gsm8k

    summary = evaluate_gsm8k(
        model=model,
        adapter=adapter,
        data=data,
        split="test",
        prompt="chat",
        samples=1,
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        engine=engine,
        seed=seed,
        dtype=dtype,
        output=output,
        overwrite=overwrite,
        progress=progress,
        problems=originals + variant_items,
        loaded=loaded,
        task="gsm_symbolic",
    )
    key = "correct_strict" if summary.get("headline") == "strict" else "correct_flexible"
    correct = {r["id"]: bool(r.get(key)) for r in read_jsonl(output / RECORDS)}
    missing = [p.id for p in originals + variant_items if p.id not in correct]
    if missing:
        raise UserError(f"{output / RECORDS}: no record for {len(missing)} items (e.g. {missing[0]})")
    summary = dict(summary)
    summary["settings"] = {**summary.get("settings", {}), "symbolic": extra_settings}
    summary["robustness"] = robustness(correct, originals, variant_items, meta["template_of"], seed=seed)
    atomic_write_json(summary_path, summary)
    return summary
