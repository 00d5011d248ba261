"""Final-answer extraction from generated text (OWNED BY: helper 'pure'; contract below is fixed).

Contract:
    extract_strict(text: str) -> str | None      # '#### N', 'The answer is N', 'The final answer is N', '\\boxed{N}'
    extract_flexible(text: str) -> str | None    # the last number in the text
    normalize_number(s: str) -> str | None       # canonical decimal string ('1,000.00' -> '1000', '−3' -> '-3')
    answers_match(pred: str | None, gold: str) -> bool   # numeric equality after normalisation

Extra:
    to_fraction(s: str) -> Fraction | None       # the exact value behind normalize_number
    score(text: str, gold: str) -> dict          # both extractions, both verdicts and a reason for each

Extracted answers are returned as the model wrote them (e.g. '$1,000'), so records show the
model's own text; comparison always goes through normalize_number.

Where we knowingly differ from lm-evaluation-harness's gsm8k filters (tests/test_extraction.py
holds their regexes as a reference and asserts each difference):
- strict takes the LAST explicit answer, lm-eval's `take_first` the first. A model that writes
  '#### 5', keeps going and then writes '#### 7' has revised its answer; generation stops at the
  end of the answer (EOS / stop sequences), so a trailing hallucinated next question is cut off
  before it can contribute a later marker.
- strict also accepts 'The answer is N', 'The final answer is N' and '\\boxed{N}' (lower priority
  than '####', the format we fine-tune on), so a base instruct model is not scored 0 for
  formatting alone. Within one marker kind the last occurrence wins; a marker kind is used
  only if it carries a number.
- numbers: a unicode minus '−' is a minus; '$' may only lead a number; a comma must group
  thousands ('1,2,3' is three numbers, not 123); a hyphen right after a word or a digit is not a
  minus ('5-3', 'COVID-19'); '50%' is 50 (GSM8K gold answers for percentages are the bare number).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# Longest run of digits we accept. GSM8K answers have at most ~10 digits; anything longer is a
# degenerate generation, and bounding it keeps Decimal/Fraction work trivially small.
MAX_DIGITS = 100

_MINUS = "-\u2212"  # ASCII hyphen-minus and the unicode minus sign
# A number token: optional sign (only when it does not follow a word, digit or closing bracket,
# so '5-3' and 'COVID-19' contribute no negative numbers), optional currency, then either
# comma-grouped thousands or plain digits, an optional decimal part, an optional percent.
_NUM_BODY = r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?![0-9])"
_NUM = (
    rf"(?:(?<![\w)\]])[{_MINUS}])?"  # sign
    rf"(?:\\?\$\s?(?:[{_MINUS}](?=[0-9.]))?)?" + _NUM_BODY + r"(?:\s?\\?%)?"  # '$', '\$' (LaTeX), '$ 5', '$-3'
)
_NUM_RE = re.compile(_NUM)

# '#### N'. The number must end its line (up to a unit word and punctuation) so that a markdown
# heading such as '#### 2. Compute the total' is not read as the answer 2.
# Each optional piece carries its own trailing spaces so that no two `\s*` can split the same
# whitespace run (which backtracks polynomially on long blank runs).
_HASH_RE = re.compile(
    r"####\s*(?:\*\*\s*)?(" + _NUM + r")(?=[ \t]*(?:[A-Za-z]+[ \t]*)?(?:[.!][ \t]*)?(?:\*\*[ \t]*)?(?:\n|$))"
)
# 'The answer is N', 'The final answer is: $18.', 'answer is **18**', 'answer is \\(18\\)'.
_ANSWER_IS_RE = re.compile(
    r"answer\s*(?:is(?:\s*:)?|:)\s*(?:\*\*\s*)?(?:\\\(\s*|\$(?=\\\$))?(" + _NUM + r")",
    re.IGNORECASE,
)
_MAX_BOXED = 300
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FRAC_RE = re.compile(r"^\s*([-\u2212]?)\s*\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}\s*$")
_TEXT_RE = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{[^{}]*\}")

_DECOR_RE = re.compile(r"\\?\$\s?|\s?\\?%")
_CANON_RE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...}, with nested braces balanced (\\boxed{\\frac{1}{2}})."""
    out = []
    for m in _BOXED_RE.finditer(text):
        depth, i = 1, m.end()
        # A final answer is short; bounding the scan keeps '\boxed{' * 10**4 linear.
        stop = min(len(text), m.end() + _MAX_BOXED)
        while i < stop and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def _number_in_boxed(content: str) -> str | None:
    frac = _FRAC_RE.match(content)
    if frac:
        sign, num, den = frac.groups()
        if normalize_number(num) is not None and normalize_number(den) is not None:
            return f"{sign}{num}/{den}"
    content = _TEXT_RE.sub(" ", content).replace("\\,", "").replace("\\!", "").replace("~", " ")
    nums = _NUM_RE.findall(content)
    # '\boxed{18}', '\boxed{\$18}', '\boxed{18 \text{ apples}}': one number. '\boxed{3 + 4}' or
    # '\boxed{2, 5}' is not a single final answer, so it does not count as one.
    if len(nums) == 1:
        return nums[0].strip()
    return None


def extract_strict(text: str) -> str | None:
    """The last answer given after an explicit marker; '####' beats '\\boxed' beats 'answer is'."""
    if not text:
        return None
    hashes = _HASH_RE.findall(text)
    if hashes:
        return hashes[-1].strip()
    boxed = [b for b in (_number_in_boxed(c) for c in _boxed_contents(text)) if b is not None]
    if boxed:
        return boxed[-1]
    said = _ANSWER_IS_RE.findall(text)
    if said:
        return said[-1].strip()
    return None


def extract_flexible(text: str) -> str | None:
    """The last number in the text (lm-eval 'flexible-extract', with the number rules above)."""
    if not text:
        return None
    last = None
    for last in _NUM_RE.finditer(text):  # noqa: B007 - we want the final match
        pass
    return last.group(0).strip() if last is not None else None


def to_fraction(s: str | None) -> Fraction | None:
    """Exact value of a number as models and GSM8K write it; None if it is not one number."""
    if s is None:
        return None
    t = s.strip().replace("\u2212", "-").replace(",", "").replace("**", "")
    # Currency and percent signs, and the single space models put after '$' or before '%'.
    t = _DECOR_RE.sub("", t).strip()
    if t.endswith("."):
        t = t[:-1]
    if "/" in t:  # a plain fraction, as \boxed{\frac{1}{2}} comes back ('1/2')
        num, _, den = t.partition("/")
        a, b = to_fraction(num), to_fraction(den)
        if a is None or b is None or b == 0:
            return None
        return a / b
    if len(t) > MAX_DIGITS + 2 or sum(c.isdigit() for c in t) > MAX_DIGITS:
        return None
    if not _CANON_RE.fullmatch(t):
        return None
    try:
        return Fraction(Decimal(t))
    except (InvalidOperation, ValueError):
        return None


def _canonical(x: Fraction) -> str:
    if x.denominator == 1:
        return str(x.numerator)
    den, twos, fives = x.denominator, 0, 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:  # not a terminating decimal: keep it exact
        return f"{x.numerator}/{x.denominator}"
    places = max(twos, fives)
    scaled = x * 10**places  # an integer by construction
    sign = "-" if scaled < 0 else ""
    digits = str(abs(scaled.numerator)).rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]}".rstrip("0")


def normalize_number(s: str | None) -> str | None:
    """Canonical string for a number: '1,000.00' -> '1000', '$0.50' -> '0.5', '−3' -> '-3', '18.' -> '18'.

    Non-terminating fractions stay exact ('1/3'). None if `s` is not a single number.
    """
    x = to_fraction(s)
    return None if x is None else _canonical(x)


def answers_match(pred: str | None, gold: str) -> bool:
    """Numeric equality after normalisation; a missing or unparseable side never matches."""
    p, g = to_fraction(pred), to_fraction(gold)
    return p is not None and g is not None and p == g


def _reason(pred: str | None, correct: bool) -> str:
    if correct:
        return "ok"
    return "no_answer" if to_fraction(pred) is None else "wrong"


def score(text: str, gold: str) -> dict[str, str | bool | None]:
    """Both extractions of one generation with verdicts; reason is 'ok', 'no_answer' or 'wrong'."""
    strict, flexible = extract_strict(text), extract_flexible(text)
    cs, cf = answers_match(strict, gold), answers_match(flexible, gold)
    return {
        "strict": strict,
        "flexible": flexible,
        "correct_strict": cs,
        "correct_flexible": cf,
        "reason_strict": _reason(strict, cs),
        "reason_flexible": _reason(flexible, cf),
    }
