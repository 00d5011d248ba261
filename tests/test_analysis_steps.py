"""Step counting in gold solutions and accuracy by step bucket."""

from __future__ import annotations

from mathtune.analysis.steps import accuracy_by_steps, bucket_label, count_gold_steps


def test_count_annotations():
    assert count_gold_steps("He has 3*4=<<3*4=12>>12 and 12+1=<<12+1=13>>13\n#### 13") == 2
    assert count_gold_steps("Just 5.\n#### 5") == 0


def test_count_equations_without_annotations():
    sol = "Apples: 5 * 2 = 10.\nPears: 3 * 4 = 12 dollars.\nTotal 10 + 12 = 22\n#### 22"
    assert count_gold_steps(sol) == 3


def test_buckets():
    assert [bucket_label(n) for n in (0, 1, 7, 8, 12)] == ["0", "1", "7", "8+", "8+"]


def _rec(steps: int, ok: bool) -> dict:
    sol = "\n".join(f"{i}+1=<<{i}+1={i + 1}>>{i + 1}" for i in range(steps)) + "\n#### 1"
    return {"gold_solution": sol, "correct_flexible": ok, "correct_strict": False}


def test_accuracy_by_steps_buckets_and_intervals():
    recs = [_rec(1, True), _rec(1, False), _rec(2, True), _rec(9, False), _rec(8, True)]
    rows = accuracy_by_steps(recs, "flexible")
    assert [r.label for r in rows] == ["1", "2", "8+"]
    one, two, many = rows
    assert (one.n, one.correct, one.acc) == (2, 1, 0.5)
    assert (two.n, two.correct) == (1, 1)
    assert (many.n, many.correct) == (2, 1)
    assert 0.0 < one.ci_low < 0.5 < one.ci_high < 1.0
    assert [r.correct for r in accuracy_by_steps(recs, "strict")] == [0, 0, 0]
