"""Answer extraction: table tests, plus agreement with lm-evaluation-harness's gsm8k rules."""

from __future__ import annotations

import re

import pytest

from mathtune.data.extraction import (
    answers_match,
    extract_flexible,
    extract_strict,
    normalize_number,
    score,
    to_fraction,
)

# --- lm-evaluation-harness reference ---------------------------------------------------------
# Source: EleutherAI/lm-evaluation-harness, lm_eval/tasks/gsm8k/gsm8k.yaml (version 3.0):
#   filter "strict-match":     regex_pattern "#### (\-?[0-9\.\,]+)", then take_first
#   filter "flexible-extract": regex_pattern "(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select -1, take_first
#   metric exact_match: ignore_case true, regexes_to_ignore [",", "\\$", "(?s).*#### ", "\\.$"],
#   applied to both the filtered prediction and the reference (the full gold solution).
# A filter that finds nothing yields "[invalid]".
LMEVAL_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
LMEVAL_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
LMEVAL_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]


def lmeval_strict(text: str) -> str:
    found = LMEVAL_STRICT.findall(text)
    return found[0] if found else "[invalid]"


def lmeval_flexible(text: str) -> str:
    found = LMEVAL_FLEXIBLE.findall(text)
    if not found:
        return "[invalid]"
    groups = [g for g in found[-1] if g]
    return groups[0].strip() if groups else "[invalid]"


def lmeval_clean(s: str) -> str:
    for pattern in LMEVAL_IGNORE:
        s = re.sub(pattern, "", s)
    return s.lower()


def lmeval_correct(pred: str, gold: str) -> bool:
    # The reference is the gold solution; '(?s).*#### ' reduces it to the final answer.
    return lmeval_clean(pred) == lmeval_clean(f"Some reasoning.\n#### {gold}")


# --- the table ----------------------------------------------------------------------------
# (id, text, gold, our strict (normalised), our flexible (normalised),
#  lm-eval agrees with our correctness verdict: (strict, flexible))
CUT_OFF = (
    "Janet has 16 eggs. She eats 3 and bakes with 4, so 16 - 3 - 4 = 9 eggs remain. She sells each for $2, so 9 * 2 ="
)
CASES = [
    ("plain", "48/2 = 24 so 24 + 48 = 72\n#### 72", "72", "72", "72", (True, True)),
    ("negative", "It drops by 5, so 2 - 5 = -3\n#### -3", "-3", "-3", "-3", (True, True)),
    ("commas", "#### 1,000", "1000", "1000", "1000", (True, True)),
    ("gold-commas", "#### 1000000", "1,000,000", "1000000", "1000000", (True, True)),
    ("currency", "She earns $18.", "18", None, "18", (True, True)),
    ("trailing-period", "#### 18.", "18", "18", "18", (True, True)),
    ("percent", "So 50% of them.\n#### 50%", "50", "50", "50", (True, True)),
    ("negative-word", "The temperature is -3 degrees", "-3", None, "-3", (True, True)),
    ("no-number", "I do not know.", "5", None, None, (True, True)),
    ("empty", "", "5", None, None, (True, True)),
    ("cut-off", CUT_OFF, "18", None, "2", (True, True)),
    (
        "huge-valid",
        "#### 123456789012345678901234567890",
        "123456789012345678901234567890",
        "123456789012345678901234567890",
        "123456789012345678901234567890",
        (True, True),
    ),
    # Too many digits to be an answer: extracted as text, but not a number, so never correct.
    ("huge-degenerate", "#### " + "9" * 150, "5", None, None, (True, True)),
    ("markdown-heading", "#### 2. Compute the total\nThe total is 40.", "40", None, "40", (True, True)),
    ("dollar-trailing", "The price is 12$", "12", None, "12", (True, True)),
    # Deliberate differences -----------------------------------------------------------------
    # Decimals compare as numbers: '3.50' is 3.5. lm-eval compares strings ('3.50' != '3.5').
    ("decimal", "Each costs $3.50\n#### 3.50", "3.5", "3.5", "3.5", (False, False)),
    # Several '####': we take the last (a revised answer), lm-eval the first.
    ("several-hashes", "#### 5\nWait, I made a mistake: 3 + 4 = 7.\n#### 7", "7", "7", "7", (False, True)),
    # Unicode minus is a minus; lm-eval's flexible regex sees only '3.' and drops the sign.
    ("unicode-minus", "The answer is \u22123.", "-3", "-3", "-3", (False, False)),
    # 'The answer is N' and '\boxed{N}' count as explicit answers for us; lm-eval strict needs '####'.
    ("answer-is", "The answer is 5. (That took 2 steps.)", "5", "5", "2", (False, True)),
    ("final-answer-bold", "**Final answer:** The final answer is **18**", "18", "18", "18", (False, True)),
    ("boxed", "So the total is \\boxed{18}.", "18", "18", "18", (False, True)),
    ("boxed-dollar", "\\boxed{\\$18}", "18", "18", "18", (False, True)),
    # A comma must group thousands: '1,2,3' is a list whose last number is 3, not 123.
    ("comma-list", "The numbers are 1,2,3", "123", None, "3", (True, False)),
]


@pytest.mark.parametrize(
    ("text", "gold", "strict", "flexible", "lmeval_agrees"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_table(text: str, gold: str, strict: str | None, flexible: str | None, lmeval_agrees) -> None:
    assert normalize_number(extract_strict(text)) == strict
    assert normalize_number(extract_flexible(text)) == flexible
    ours = (answers_match(extract_strict(text), gold), answers_match(extract_flexible(text), gold))
    theirs = (lmeval_correct(lmeval_strict(text), gold), lmeval_correct(lmeval_flexible(text), gold))
    for mode, agrees, o, t in zip(("strict", "flexible"), lmeval_agrees, ours, theirs, strict=True):
        assert (o == t) is agrees, f"{mode}: ours={o} lm-eval={t}, expected agreement={agrees}"


def test_lmeval_reference_is_wired_correctly() -> None:
    # Guards the reference itself, so the agreement assertions above can fail for real reasons.
    assert lmeval_strict("a\n#### 1,000.") == "1,000."
    assert lmeval_correct("1,000.", "1000")
    assert lmeval_flexible("costs $3.50 today") == "$3.50"
    assert lmeval_flexible("none") == "[invalid]"
    assert not lmeval_correct("[invalid]", "5")


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        ("18", "18"),
        ("18.00", "18"),
        ("0.50", "0.5"),
        (".5", "0.5"),
        ("1,000", "1000"),
        ("$1,000.00", "1000"),
        ("\\$18", "18"),
        ("50%", "50"),
        ("18.", "18"),
        (" 7 ", "7"),
        ("-0", "0"),
        ("\u22123", "-3"),
        ("-0.125", "-0.125"),
        ("1/4", "0.25"),
        ("1/3", "1/3"),
        ("**18**", "18"),
        ("abc", None),
        ("", None),
        ("1e5", None),
        ("nan", None),
        ("inf", None),
        ("1/0", None),
        ("3 4", None),
        ("9" * 101, None),
    ],
)
def test_normalize_number(s: str, expected: str | None) -> None:
    assert normalize_number(s) == expected


def test_normalize_none() -> None:
    assert normalize_number(None) is None


def test_answers_match() -> None:
    assert answers_match("18.00", "18")
    assert answers_match("$1,000", "1,000")
    assert answers_match("\u22123", "-3")
    assert not answers_match("18", "19")
    assert not answers_match(None, "18")
    assert not answers_match("18", "not a number")
    # Exact, not float, comparison: these differ in the 17th digit.
    assert not answers_match("0.10000000000000001", "0.1")


def test_strict_priority_and_last_occurrence() -> None:
    # '####' beats every other marker, wherever it is.
    assert extract_strict("#### 4\nThe answer is 9") == "4"
    assert extract_strict("The answer is 9. \\boxed{3}") == "3"
    # Within a marker kind, the last one wins.
    assert extract_strict("The answer is 9. No, the answer is 11.") == "11"
    assert extract_strict("\\boxed{1} then \\boxed{2}") == "2"
    # A marker without a number does not block a later kind.
    assert extract_strict("#### Step 1\nThe answer is 6") == "6"
    assert extract_strict("The answer is: $\\$5$") == "\\$5"


def test_strict_forms() -> None:
    assert normalize_number(extract_strict("The answer is: $18.00.")) == "18"
    assert normalize_number(extract_strict("answer is \\(42\\)")) == "42"
    assert normalize_number(extract_strict("THE ANSWER IS 7")) == "7"
    assert normalize_number(extract_strict("#### $1,000 dollars.")) == "1000"
    assert normalize_number(extract_strict("\\boxed{18\\%}")) == "18"
    assert normalize_number(extract_strict("\\boxed{18 \\text{ apples}}")) == "18"
    assert normalize_number(extract_strict("\\boxed{\\frac{1}{2}}")) == "0.5"
    assert normalize_number(extract_strict("\\boxed{-\\frac{3}{4}}")) == "-0.75"
    # Not a single final number: not an answer.
    assert extract_strict("\\boxed{3 + 4}") is None
    assert extract_strict("\\boxed{18") is None  # unbalanced
    assert extract_strict("The answer is that she has more.") is None


def test_flexible_number_rules() -> None:
    assert extract_flexible("5-3 = 2.") == "2"
    assert extract_flexible("COVID-19") == "19"  # hyphen after a word is not a minus
    assert extract_flexible("It costs $-3") == "$-3"
    assert extract_flexible("(-3)") == "-3"
    assert extract_flexible("x=-3") == "-3"
    assert extract_flexible("1,000,000 people") == "1,000,000"
    assert extract_flexible("then 12,5") == "5"  # not thousands grouping
    assert extract_flexible("3.14159 is pi") == "3.14159"
    assert extract_flexible("version ٣") is None  # non-ASCII digits are not read as numbers


def test_score_reasons() -> None:
    s = score("So 9 * 2 = 18.\n#### 18", "18")
    assert s == {
        "strict": "18",
        "flexible": "18",
        "correct_strict": True,
        "correct_flexible": True,
        "reason_strict": "ok",
        "reason_flexible": "ok",
    }
    s = score(CUT_OFF, "18")
    assert (s["reason_strict"], s["reason_flexible"]) == ("no_answer", "wrong")
    s = score("", "18")
    assert (s["strict"], s["flexible"], s["reason_flexible"]) == (None, None, "no_answer")


def test_to_fraction_exact() -> None:
    from fractions import Fraction

    assert to_fraction("0.1") == Fraction(1, 10)
    assert to_fraction("-1,234.5") == Fraction(-2469, 2)
