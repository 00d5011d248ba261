"""Property tests: untrusted text and bytes never crash the parsers or run code.

Kept small (a few hundred examples in all) so the file runs in seconds; `deadline=None` because
this shared machine's timing is noisy, and the tests assert behaviour, never speed.
"""

from __future__ import annotations

import re
import string
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mathtune.data.extraction import answers_match, extract_flexible, extract_strict, normalize_number, score
from mathtune.data.gsm8k import load_gsm8k
from mathtune.data.safe_eval import SafeEvalError, find_equations, safe_eval
from mathtune.errors import UserError
from mathtune.io import iter_jsonl

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that looks like model output: digits, operators, markers and arbitrary unicode mixed.
_PIECES = st.sampled_from(
    [
        "#### ",
        "The answer is ",
        "\\boxed{",
        "}",
        "$",
        ",",
        ".",
        "%",
        "-",
        "\u2212",
        "=",
        "<<",
        ">>",
        "\n",
        " ",
        "x",
        "*",
        "/",
        "(",
        ")",
        "**",
        "1,000",
        "3.50",
        "9" * 60,
    ]
)
_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(_PIECES, st.integers(-(10**6), 10**6).map(str), st.text(max_size=5)), max_size=60).map("".join),
)


@FUZZ
@given(_TEXT, st.text(max_size=20))
def test_extraction_never_raises(text: str, gold: str) -> None:
    for value in (extract_strict(text), extract_flexible(text)):
        assert value is None or isinstance(value, str)
        norm = normalize_number(value)
        assert norm is None or isinstance(norm, str)
        assert isinstance(answers_match(value, gold), bool)
    s = score(text, gold)
    assert s["reason_strict"] in {"ok", "no_answer", "wrong"}
    assert s["reason_flexible"] in {"ok", "no_answer", "wrong"}


@FUZZ
@given(st.integers(-(10**30), 10**30), st.integers(0, 6))
def test_flexible_round_trips_numbers(n: int, places: int) -> None:
    value = Fraction(n, 10**places)
    written = f"{'-' if value < 0 else ''}{abs(n) // 10**places:,}"
    if places:
        written += "." + str(abs(n) % 10**places).rjust(places, "0")
    text = f"So the total is ${written}."
    assert Fraction(normalize_number(extract_flexible(text))) == value
    assert answers_match(extract_flexible(text), written.replace(",", ""))
    assert extract_strict(f"#### {written}") == written


_EXPR_CHARS = string.digits + "+-*/%().,$ x^e" + "\u00d7\u00f7\u2212"


@FUZZ
@given(st.one_of(st.text(max_size=250), st.text(alphabet=_EXPR_CHARS, max_size=80)))
def test_safe_eval_only_fraction_or_safe_error(expr: str) -> None:
    try:
        v = safe_eval(expr)
    except SafeEvalError:
        return
    assert isinstance(v, Fraction)
    assert v.numerator.bit_length() <= 1024 and v.denominator.bit_length() <= 1024


_HOSTILE = [
    "__import__('os').system('touch pwned')",
    "exec('1')",
    "eval('1')",
    "(lambda: 0)()",
    "[x for x in ().__class__.__mro__]",
    "9**9**9",
    "2**2**2**2**2**2",
    "(" * 1000 + "1" + ")" * 1000,
    "-" * 1000 + "1",
    "1/0",
    "1 % 0",
    "10**100000",
    "99999!",
    "factorial(99999)",
    "1" * 5000,
    "1e999999",
]


@pytest.mark.parametrize("expr", _HOSTILE)
def test_safe_eval_rejects_hostile(expr: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SafeEvalError):
        safe_eval(expr)
    assert not (tmp_path / "pwned").exists()


@FUZZ
@given(_TEXT)
def test_find_equations_never_raises(text: str) -> None:
    for e in find_equations(text):
        assert e.correct in (True, False, None)
        assert (e.correct is None) == (e.lhs_value is None or e.rhs_value is None)


_LINE_RE = re.compile(r":\d+: ")


@FUZZ
@given(st.binary(max_size=400))
def test_iter_jsonl_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.jsonl"
    path.write_bytes(data)
    try:
        rows = list(iter_jsonl(path))
    except UserError as e:
        msg = str(e)
        assert str(path) in msg and _LINE_RE.search(msg), msg
        assert "\n" not in msg
        return
    assert all(isinstance(r, dict) for r in rows)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=400),
        st.lists(
            st.sampled_from(
                [
                    b'{"question": "q", "answer": "a\\n#### 5"}',
                    b'{"question": "", "answer": "#### 5"}',
                    b'{"question": "q", "answer": "no final line"}',
                    b'{"question": 3, "answer": "#### 5"}',
                    b"[1, 2]",
                    b"{",
                    b"",
                    b"\xff\xfe",
                ]
            ),
            max_size=6,
        ).map(b"\n".join),
    )
)
def test_load_gsm8k_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    try:
        problems = load_gsm8k(str(path))
    except UserError as e:
        msg = str(e)
        assert "\n" not in msg
        assert "holds no records" in msg or (str(path) in msg and _LINE_RE.search(msg)), msg
        return
    assert problems and all(p.question and p.answer for p in problems)
