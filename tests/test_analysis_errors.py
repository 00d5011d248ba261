"""Error categories on constructed solutions: each rule, and the priority order between them."""

from __future__ import annotations

from mathtune.analysis.errors import CATEGORY_ORDER, analyze_errors, classify, equations_in

Q = "A farm has 12 cows and 8 goats. Each cow eats 3 kg of hay a day. How much hay do the cows eat a day?"
GOLD = "The cows eat 12*3=<<12*3=36>>36 kg.\n#### 36"
Q2 = "Bob buys 5 apples at $2 each and 3 pears at $4 each. How much does he spend?"
GOLD2 = "5*2=<<5*2=10>>10\n3*4=<<3*4=12>>12\n10+12=<<10+12=22>>22\n#### 22"


def rec(
    text: str,
    *,
    answer: str | None,
    strict: str | None = "x",
    finish: str = "stop",
    q: str = Q,
    gold_solution: str = GOLD,
    gold: str = "36",
    correct: bool = False,
) -> dict:
    return {
        "id": "test-1",
        "question": q,
        "gold": gold,
        "gold_solution": gold_solution,
        "generations": [{"text": text, "finish_reason": finish, "tokens": 16}],
        "strict": strict,
        "flexible": answer,
        "correct_strict": correct,
        "correct_flexible": correct,
    }


def cat(r: dict, headline: str = "flexible") -> str | None:
    c = classify(r, headline)
    return None if c is None else c.category


def test_correct_answer_has_no_category():
    assert classify(rec("12 * 3 = 36\n#### 36", answer="36", correct=True)) is None


def test_truncated_needs_length_and_no_marked_answer():
    r = rec("First, 12 cows and", answer="12", strict=None, finish="length")
    assert cat(r) == "truncated"
    # Same text but the model stopped on its own: not truncation, falls through to later rules.
    assert cat(rec("First, 12 cows and", answer="12", strict=None, finish="stop")) != "truncated"
    # Hit the limit after writing a marked (wrong) answer: the answer was given, so not truncated.
    assert cat(rec("12 * 3 = 35\n#### 35", answer="35", strict="35", finish="length")) == "arithmetic"


def test_no_answer_when_headline_extraction_finds_nothing():
    assert cat(rec("I do not know.", answer=None, strict=None)) == "no_answer"
    # strict headline: a number without a marker is still 'no answer'
    r = rec("12 * 3 = 36", answer="36", strict=None)
    r["strict"] = None
    assert cat(r, "strict") == "no_answer"


def test_arithmetic_slip_names_the_wrong_equation():
    c = classify(
        rec("5 * 2 = 10\n3 * 4 = 12\n10 + 12 = 24\n#### 24", answer="24", q=Q2, gold_solution=GOLD2, gold="22")
    )
    assert c is not None and c.category == "arithmetic"
    assert "10 + 12 = 24" in c.detail and "22" in c.detail


def test_arithmetic_beats_step_count():
    # one wrong equation and a missing step: arithmetic comes first in the priority order
    assert cat(rec("5 * 2 = 11\n#### 11", answer="11", q=Q2, gold_solution=GOLD2, gold="22")) == "arithmetic"


def test_missing_and_extra_steps():
    c = classify(rec("5 * 2 = 10\n#### 10", answer="10", q=Q2, gold_solution=GOLD2, gold="22"))
    assert c is not None and c.category == "steps" and "1 equation(s) vs 3 step(s)" in c.detail
    assert "missing" in c.detail
    c = classify(rec("12 * 3 = 36\n36 + 8 = 44\n#### 44", answer="44", gold="36"))
    assert c is not None and c.category == "steps" and "extra" in c.detail


def test_misread_number_not_in_question():
    c = classify(rec("15 * 3 = 45\n#### 45", answer="45"))
    assert c is not None and c.category == "misread" and "15" in c.detail


def test_misread_answer_copied_from_question():
    # one correct equation (right step count) but the final answer is the goats count from the question
    c = classify(
        rec(
            "12 * 3 = 36 kg of hay.\nThe answer is 8",
            answer="8",
            gold="36",
            gold_solution="12*3=<<12*3=36>>36\n#### 36",
        )
    )
    assert c is not None and c.category == "misread" and "question" in c.detail


def test_other_when_no_rule_applies():
    # right arithmetic, one step like the gold, numbers from the question, wrong operation
    assert cat(rec("12 + 3 = 15\n#### 15", answer="15")) == "other"


def test_equations_are_found_one_per_line():
    eqs = equations_in("5 * 2 = 10\n3 * 4 = 12\n10 + 12 = 24")
    assert [e.correct for e in eqs] == [True, True, False]


def test_analyze_counts_rates_and_examples():
    recs = [
        rec("12 * 3 = 36\n#### 36", answer="36", correct=True),
        rec("I do not know.", answer=None, strict=None),
        rec("12 * 3 = 35\n#### 35", answer="35"),
        rec("12 * 3 = 34\n#### 34", answer="34"),
    ]
    ea = analyze_errors(recs, "flexible", max_examples=1)
    assert ea.n == 4 and ea.n_wrong == 3
    assert ea.counts == {"arithmetic": 2, "truncated": 0, "no_answer": 1, "steps": 0, "misread": 0, "other": 0}
    assert abs(ea.rates["arithmetic"] - 2 / 3) < 1e-12
    assert len(ea.examples["arithmetic"]) == 1
    assert list(ea.counts) == list(CATEGORY_ORDER)


def test_arithmetic_slip_outranks_truncation():
    # Cut off at the token limit, but the solution already contains a false equation.
    r = rec("She has 16 * 3 = 48 eggs, then 48 * 3 = 156 and", answer="156", strict=None, finish="length")
    assert cat(r) == "arithmetic"
