"""Safe arithmetic evaluator for untrusted text (OWNED BY: helper 'pure'; contract fixed).

Contract:
    class ArithmeticError_(ValueError)        # named SafeEvalError
    safe_eval(expr: str) -> fractions.Fraction   # raises SafeEvalError on anything not plain bounded arithmetic
"""

from __future__ import annotations

from fractions import Fraction


class SafeEvalError(ValueError):
    """The expression is not plain arithmetic, or exceeds the evaluator's bounds."""


def safe_eval(expr: str) -> Fraction:
    raise NotImplementedError
