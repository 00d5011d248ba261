"""Automatic error categories for wrong GSM8K answers.

Each wrong answer gets exactly one category: the first rule that applies, in this order.

1. arithmetic     an equation 'a op b = c' in the model's solution is false (checked exactly with
                  safe_eval; `2 + 3 = 6`). First, because a visible slip is wrong whatever follows
                  it: a cut-off solution that already miscalculated is an arithmetic error.
2. truncated      generation hit max_new_tokens (finish_reason "length") and has no marked final
                  answer (no strict extraction): the model never got to its answer.
3. no_answer      no answer could be extracted with the headline extraction (wrong format).
4. steps          all equations are right, but the model wrote a different number of equations
                  than the gold solution has calculation steps (missing or extra steps).
5. misread        arithmetic right, step count right, and there is evidence the model solved a
                  different problem: an equation uses a number that is neither in the question,
                  nor an earlier result, nor a common unit constant; or the final answer is a
                  number from the question or an intermediate result (a different quantity).
6. other          none of the rules applies (wrong operation or logic the rules cannot see).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from mathtune.analysis.steps import count_gold_steps

CATEGORY_ORDER = ("arithmetic", "truncated", "no_answer", "steps", "misread", "other")
CATEGORY_LABELS = {
    "truncated": "truncated",
    "no_answer": "no answer / wrong format",
    "arithmetic": "arithmetic slip",
    "steps": "missing or extra steps",
    "misread": "misread problem",
    "other": "other",
}
CATEGORY_RULES = {
    "truncated": "finish_reason is 'length' (hit max_new_tokens) and no marked final answer was "
    "extracted (strict extraction found nothing).",
    "no_answer": "the headline extraction found no answer in the generation (no number for flexible; "
    "no '#### N' / 'The answer is N' for strict).",
    "arithmetic": "at least one equation 'a op b = c' in the model's solution is false when its "
    "left side is evaluated exactly (safe_eval, rational arithmetic).",
    "steps": "every equation is correct, but the number of equations differs from the number of "
    "calculation steps (calculator annotations) in the gold solution.",
    "misread": "arithmetic and step count are right, and an equation uses a number found neither in "
    "the question, nor in an earlier result, nor among common constants (0-10, 12, 24, 30, 52, 60, "
    "100, 365, 1000); or the final answer equals a number from the question or an intermediate "
    "result (the model answered a different quantity).",
    "other": "none of the above rules applies (typically a wrong choice of operation).",
}
_CONSTANTS = {Fraction(n) for n in (*range(11), 12, 24, 30, 52, 60, 100, 365, 1000)}
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class Equation:
    text: str
    lhs: str
    rhs: str
    lhs_value: Fraction | None
    rhs_value: Fraction | None
    correct: bool | None  # None: could not be checked


@dataclass(frozen=True)
class ErrorCase:
    id: str
    category: str
    detail: str  # where it went wrong, in words
    question: str
    gold: str
    gold_solution: str
    model_solution: str
    answer: str | None


@dataclass
class ErrorAnalysis:
    headline: str
    n: int
    n_wrong: int
    counts: dict[str, int]
    rates: dict[str, float]  # share of wrong answers
    examples: dict[str, list[ErrorCase]] = field(default_factory=dict)
    cases: list[ErrorCase] = field(default_factory=list)


def parse_numbers(text: str) -> list[Fraction]:
    out = []
    for m in _NUMBER.finditer(text or ""):
        try:
            out.append(Fraction(m.group(0).replace(",", "")))
        except (ValueError, ZeroDivisionError):
            continue
    return out


def _get(obj: Any, *names: str) -> Any:
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if not isinstance(obj, dict) and hasattr(obj, n):
            return getattr(obj, n)
    return None


def _frac(v: Any) -> Fraction | None:
    if v is None:
        return None
    try:
        return Fraction(v)
    except (TypeError, ValueError):
        return None


def equations_in(text: str) -> list[Equation]:
    """The model's equations, via mathtune.data.safe_eval.find_equations (never eval())."""
    from mathtune.data.safe_eval import find_equations

    out = []
    # Line by line: an equation never spans lines, and a previous line ending in a digit must not
    # make the next line's equation look like the tail of a longer expression.
    found = [eq for line in (text or "").splitlines() for eq in find_equations(line)]
    for eq in found:
        lhs, rhs = str(_get(eq, "lhs") or ""), str(_get(eq, "rhs") or "")
        out.append(
            Equation(
                text=str(_get(eq, "text", "raw", "source") or f"{lhs} = {rhs}"),
                lhs=lhs,
                rhs=rhs,
                lhs_value=_frac(_get(eq, "lhs_value", "value", "computed")),
                rhs_value=_frac(_get(eq, "rhs_value", "stated", "claimed")),
                correct=_get(eq, "correct", "ok"),
            )
        )
    return out


def _fmt(v: Fraction | None) -> str:
    if v is None:
        return "?"
    if v.denominator == 1:
        return str(v.numerator)
    return f"{float(v):.6g}"


def _misread_evidence(question: str, eqs: list[Equation], answer: str | None) -> str | None:
    known = set(parse_numbers(question)) | _CONSTANTS
    for eq in eqs:
        for x in parse_numbers(eq.lhs):
            if abs(x) not in known and x not in known:
                return f"'{eq.text}' uses {_fmt(x)}, which is not in the question or an earlier result"
        if eq.rhs_value is not None:
            known.add(eq.rhs_value)
    ans = _frac(parse_numbers(answer or "")[0]) if parse_numbers(answer or "") else None
    if ans is None:
        return None
    if ans in set(parse_numbers(question)):
        return f"the answer {_fmt(ans)} is a number copied from the question"
    intermediate = [e.rhs_value for e in eqs[:-1] if e.rhs_value is not None]
    if ans in intermediate:
        return f"the answer {_fmt(ans)} is an intermediate result, not the quantity asked for"
    return None


def classify(record: dict[str, Any], headline: str = "flexible") -> ErrorCase | None:
    """The category of one evaluated record, or None when its headline answer is correct."""
    if record.get(f"correct_{headline}"):
        return None
    gens = record.get("generations") or [{}]
    gen = gens[0] if isinstance(gens[0], dict) else {}
    text = str(gen.get("text") or "")
    answer = record.get(headline)
    gold_solution = str(record.get("gold_solution") or "")

    def case(category: str, detail: str) -> ErrorCase:
        return ErrorCase(
            id=str(record.get("id")),
            category=category,
            detail=detail,
            question=str(record.get("question") or ""),
            gold=str(record.get("gold") or ""),
            gold_solution=gold_solution,
            model_solution=text,
            answer=None if answer is None else str(answer),
        )

    eqs = equations_in(text)
    wrong = [e for e in eqs if e.correct is False]
    if wrong:
        e = wrong[0]
        return case("arithmetic", f"'{e.text}': the left side is {_fmt(e.lhs_value)}, not {_fmt(e.rhs_value)}")
    if gen.get("finish_reason") == "length" and record.get("strict") is None:
        return case("truncated", f"stopped at the token limit ({gen.get('tokens', '?')} tokens) before a final answer")
    if answer is None:
        what = "no number in the output" if headline == "flexible" else "no '#### N' or 'The answer is N'"
        return case("no_answer", what)
    gold_steps = count_gold_steps(gold_solution)
    if len(eqs) != gold_steps:
        kind = "missing steps" if len(eqs) < gold_steps else "extra steps"
        return case("steps", f"{len(eqs)} equation(s) vs {gold_steps} step(s) in the gold solution ({kind})")
    evidence = _misread_evidence(str(record.get("question") or ""), eqs, None if answer is None else str(answer))
    if evidence:
        return case("misread", evidence)
    return case("other", f"answer {answer} vs gold {record.get('gold')}; equations and step count look right")


def analyze_errors(
    records: list[dict[str, Any]], headline: str = "flexible", *, max_examples: int = 3
) -> ErrorAnalysis:
    cases = [c for c in (classify(r, headline) for r in records) if c is not None]
    counts = {k: 0 for k in CATEGORY_ORDER}
    examples: dict[str, list[ErrorCase]] = {k: [] for k in CATEGORY_ORDER}
    for c in cases:
        counts[c.category] += 1
        if len(examples[c.category]) < max_examples:
            examples[c.category].append(c)
    n_wrong = len(cases)
    rates = {k: (v / n_wrong if n_wrong else 0.0) for k, v in counts.items()}
    return ErrorAnalysis(headline, len(records), n_wrong, counts, rates, examples, cases)
