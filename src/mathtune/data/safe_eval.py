"""Safe arithmetic evaluator for untrusted text (OWNED BY: helper 'pure'; contract fixed).

Contract:
    class SafeEvalError(ValueError)
    safe_eval(expr: str) -> fractions.Fraction   # raises SafeEvalError on anything not plain bounded arithmetic

Extra:
    find_equations(text: str) -> list[Equation]  # 'a op b = c' equations in a solution, each checked

Model output is untrusted: the expression is parsed with `ast.parse(mode="eval")` and only number
literals, unary +/-, and binary + - * / // % ** are walked; nothing is ever passed to eval/exec/
compile. Every input is bounded before work is done (length, node count, exponent size, result
size in bits), so '9**9**9' or '10**100000' fail at once instead of hanging.

Written forms are normalised first: 'x' '×' '·' for *, '÷' for /, '−' for -, '^' for **, '$'
dropped, '1,000' thousands commas, and '50%' = 0.5 ('%' after a number is always percent, as in
solutions; modulo is only reachable as '(a) % b'). A tight fraction binds before spaced operators:
'25 / 1/3' = 75, as people mean it.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

MAX_LENGTH = 200  # characters of the expression as written
MAX_NODES = 120  # AST nodes after parsing
MAX_BITS = 1024  # bit length of any numerator/denominator, input or intermediate
MAX_EXPONENT = 1024  # |n| in x ** n


class SafeEvalError(ValueError):
    """The expression is not plain arithmetic, or exceeds the evaluator's bounds."""


# The operator spellings models use, mapped to Python's. 'x' is multiplication only between two
# operands ('0.2 x 50'), never inside a word.
_TIMES_X = re.compile(r"(?<=[0-9)%.])\s*[xX]\s*(?=[-\u2212$(.0-9])")
_THOUSANDS = re.compile(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))")
_TIGHT_FRACTION = re.compile(r"(?<![0-9./*])([0-9]+(?:\.[0-9]+)?/[0-9]+(?:\.[0-9]+)?)(?![0-9./(*])")
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*%")


def _normalize(expr: str) -> str:
    s = expr.strip()
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("\u00d7", "*").replace("\u22c5", "*")
    s = s.replace("\u00b7", "*").replace("\u00f7", "/").replace("\u2044", "/").replace("^", "**")
    s = s.replace("\\$", "").replace("$", "")
    s = _TIMES_X.sub("*", s)
    s = _THOUSANDS.sub("", s)
    # '50%' is the number 0.5; parenthesised so '2 ** 50%' keeps its meaning.
    s = _PERCENT.sub(r"(\1/100)", s)
    # A tight fraction binds tighter than spaced operators, as people write it: '25 / 1/3' is 75.
    # Elsewhere the parentheses change nothing (exact * and / are associative); not after '**'.
    s = _TIGHT_FRACTION.sub(r"(\1)", s)
    return s.strip()


_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)


def _check_size(x: Fraction) -> Fraction:
    if x.numerator.bit_length() > MAX_BITS or x.denominator.bit_length() > MAX_BITS:
        raise SafeEvalError(f"number too large (over {MAX_BITS} bits)")
    return x


def _literal(node: ast.Constant) -> Fraction:
    v = node.value
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SafeEvalError(f"not a number: {type(v).__name__} literal")
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise SafeEvalError("not a finite number")
        # repr is the shortest string that round-trips, i.e. the decimal the model wrote (for up
        # to 15 significant digits): 0.1 becomes exactly 1/10, not the binary float.
        return _check_size(Fraction(Decimal(repr(v))))
    return _check_size(Fraction(v))


def _power(base: Fraction, exp: Fraction) -> Fraction:
    if exp.denominator != 1:
        raise SafeEvalError("only whole-number exponents are supported")
    n = exp.numerator
    if abs(n) > MAX_EXPONENT:
        raise SafeEvalError(f"exponent {n} is too large")
    if base == 0 and n < 0:
        raise SafeEvalError("division by zero")
    # Bound the result before computing it: bits(a**n) is about |n| * log2(a).
    if abs(n) * math.log2(max(abs(base.numerator), base.denominator)) > MAX_BITS + 1:
        raise SafeEvalError(f"result too large (over {MAX_BITS} bits)")
    return base**n


def _walk(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant):
        return _literal(node)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        v = _walk(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
        a, b = _walk(node.left), _walk(node.right)
        op = node.op
        if isinstance(op, ast.Pow):
            return _check_size(_power(a, b))
        if isinstance(op, ast.Div | ast.FloorDiv | ast.Mod) and b == 0:
            raise SafeEvalError("division by zero")
        if isinstance(op, ast.Add):
            r = a + b
        elif isinstance(op, ast.Sub):
            r = a - b
        elif isinstance(op, ast.Mult):
            r = a * b
        elif isinstance(op, ast.Div):
            r = a / b
        elif isinstance(op, ast.FloorDiv):
            r = Fraction(a // b)
        else:
            r = a % b
        return _check_size(r)
    raise SafeEvalError(f"not plain arithmetic: {type(node).__name__}")


def safe_eval(expr: str) -> Fraction:
    """Exact value of a plain arithmetic expression such as '48/2', '0.2 x 50', '$1,200 * 15%'."""
    if not isinstance(expr, str):
        raise SafeEvalError(f"expected a string, got {type(expr).__name__}")
    if len(expr) > MAX_LENGTH:
        raise SafeEvalError(f"expression longer than {MAX_LENGTH} characters")
    s = _normalize(expr)
    if not s:
        raise SafeEvalError("empty expression")
    if not s.isascii():
        raise SafeEvalError("unexpected character in expression")
    try:
        tree = ast.parse(s, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise SafeEvalError(f"not an arithmetic expression ({type(e).__name__})") from None
    for count, _ in enumerate(ast.walk(tree), start=1):
        if count > MAX_NODES:
            raise SafeEvalError(f"expression has more than {MAX_NODES} parts")
    return _walk(tree.body)


# --- equations in solution text -------------------------------------------------------------

_ANNOTATION = re.compile(r"<<[^<>]*>>")  # GSM8K calculator annotations: '<<48/2=24>>'
# A number as written in a solution: optional currency, thousands commas, decimals, percent.
_E_NUM = r"(?:\$\s?)?(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?(?:\s?%)?"
_E_OPERAND = r"(?:\(\s*)*" + _E_NUM + r"(?:\s*\))*"
_E_OP = r"(?:\s*[-+*/\u00d7\u00f7\u2212^]\s*|\s+[xX]\s+|(?<=[0-9])[xX](?=[0-9$]))"
_E_EXPR = r"[-\u2212]?\s?" + _E_OPERAND + r"(?:" + _E_OP + _E_OPERAND + r")*"
_E_EQUATION = re.compile(
    r"(?<![\w.,$])(" + _E_EXPR + r")((?:\s*=\s*" + _E_EXPR + r")+)(?![0-9])",
)
# Stretches of a line that can hold arithmetic; equations are searched only inside them.
_E_RUN = re.compile(r"[-0-9$.,%()+*/\u00d7\u00f7\u2212^xX= \t]+")
_MAX_RUN = 150
_HAS_OP = re.compile(r"[0-9)%]\s*(?:[-+*/\u00d7\u00f7\u2212^]|[xX])\s*[-\u2212$(.0-9]")
_DECIMALS = re.compile(r"\.([0-9]+)")


@dataclass(frozen=True)
class Equation:
    lhs: str
    rhs: str
    lhs_value: Fraction | None
    rhs_value: Fraction | None
    correct: bool | None  # None when a side could not be evaluated
    start: int  # character offsets of the equation in the text given to find_equations
    end: int

    @property
    def text(self) -> str:
        return f"{self.lhs} = {self.rhs}"


def _try_eval(s: str) -> Fraction | None:
    try:
        return safe_eval(s)
    except SafeEvalError:
        return None


def _agrees(lhs: Fraction, rhs: Fraction, lhs_text: str, rhs_text: str) -> bool:
    if _close(lhs, rhs, rhs_text, lhs_text):
        return True
    if ("%" in lhs_text) != ("%" in rhs_text):
        # One side in percent points, the other not: '(75/100)*100 = 75%', '100 - 50 = 50%' and
        # '1/2 = 50%' are all written in real solutions; accept either reading.
        return _close(lhs / 100 if "%" in rhs_text else lhs * 100, rhs, rhs_text)
    return False


def _close(lhs: Fraction, rhs: Fraction, rhs_text: str, lhs_text: str = "") -> bool:
    if lhs == rhs:
        return True
    if "/" in lhs_text and rhs.denominator == 1 and lhs.denominator != 1 and "." not in rhs_text:
        # A division taken to a whole number ('13 / 6 = 2' pupils per group, '17/3 = 5' full
        # boxes): word problems round on purpose, so floor and ceiling both count as correct.
        return rhs in (math.floor(lhs), math.ceil(lhs))
    places = [len(d) for d in _DECIMALS.findall(rhs_text)]
    if not places and "%" not in rhs_text:
        return False
    # A rounded result ('10/3 = 3.33', '2/3 = 66.7%'): within one unit of the last written place,
    # or within 1% relative.
    unit = Fraction(1, 10 ** max(places)) if places else Fraction(1, 100)
    if "%" in rhs_text:
        unit /= 100
    diff = abs(lhs - rhs)
    return diff <= unit or diff <= abs(rhs) / 100


# The match is only part of a larger expression when it is glued to a variable, a bracket, an
# operator or a mixed number: 'S + 143 = 200', '60 students x 2/3 = 40', '100/5 = 5A/5',
# '3/4 * 2 = 1 1/2'. Such equations are not judged: their sides are not what the writer equated.
_OPS = "-+*/\u00d7\u00f7\u2212^("
_NUM_PUNCT = re.compile(r"[0-9][,.:]$")  # '14, 400 / 80', '6:00+48'

_LONE_X = re.compile(r"(?:^|[^A-Za-z])[xX]$")
_BULLET = re.compile(r"(?m)^[ \t]*[-*\u2022][ \t]+(?=[$\d(])")
_AFTER_BAD = re.compile(r"^(?:[A-Za-z0-9(]|\s*[-+*/\u00d7\u00f7\u2212^(]|\s+[0-9]+/[0-9])")


def _starts_free(clean: str, start: int, lhs: str) -> bool:
    # Only the current line counts: a digit ending the previous line does not glue to this one.
    before = clean[max(0, start - 20) : start].rsplit("\n", 1)[-1].rstrip()
    if not before:
        return True
    # A word just before is fine ('She spent 3 + 4 = 7'); an operator, a digit, a broken
    # thousands group ('14, 400 / 80') or a lone 'x' is not.
    if before[-1] in _OPS or before[-1].isdigit() or _LONE_X.search(before) or _NUM_PUNCT.search(before):
        return False
    if before[-1].isalpha() or before[-1] in ")$%":
        # 'Y - 20 - 25 = 45': a leading minus after a word is a subtraction from that word.
        # 'Week 2 = 35 + 35': a bare number after a word is a label, not the left side.
        return not (lhs[:1] in "-\u2212" or not _HAS_OP.search(lhs))
    return True


def _ends_free(clean: str, end: int) -> bool:
    return not _AFTER_BAD.search(clean[end : end + 20].split("\n", 1)[0])


def find_equations(text: str) -> list[Equation]:
    """Every 'a op b = c' in a solution, each side evaluated exactly and the two compared.

    GSM8K calculator annotations ('<<48/2=24>>') are removed first (the visible text repeats
    them). A chain 'a = b = c' yields (a, b) and (b, c). An equation where neither side has an
    operator ('x = 5', '2 = 2') is not reported. Offsets refer to the text after annotations
    are removed.
    """
    clean = _ANNOTATION.sub("", text or "")
    # A list bullet ('- 2 * 2 = 4') is not a minus sign; blank it out, keeping offsets.
    clean = _BULLET.sub(lambda m: " " * len(m.group(0)), clean)
    out: list[Equation] = []
    for run in _E_RUN.finditer(clean):
        # The equation regex backtracks quadratically in its input; runs of arithmetic characters
        # are short in real text, and an absurdly long one ('1 + 1 + ...') is skipped unread.
        if len(run.group(0)) <= _MAX_RUN and "=" in run.group(0):
            out.extend(_equations_in(clean, run.start(), run.end()))
    return out


def _equations_in(clean: str, pos: int, endpos: int) -> list[Equation]:
    out: list[Equation] = []
    for m in _E_EQUATION.finditer(clean, pos, endpos):
        sides = [m.group(1)] + re.split(r"\s*=\s*", m.group(2))[1:]
        sides = [s.strip() for s in sides]
        # In a chain 'S + 143 = 200 - 16 = 184' only the glued end is dropped.
        first_ok, last_ok = _starts_free(clean, m.start(), sides[0]), _ends_free(clean, m.end())
        for i, (left, right) in enumerate(zip(sides, sides[1:], strict=False)):
            if (i == 0 and not first_ok) or (i == len(sides) - 2 and not last_ok):
                continue
            if not (_HAS_OP.search(left) or _HAS_OP.search(right)):
                continue
            lv, rv = _try_eval(left), _try_eval(right)
            correct = None if lv is None or rv is None else _agrees(lv, rv, left, right)
            out.append(Equation(left, right, lv, rv, correct, m.start(), m.end()))
    return out
