"""Number formatting and report blocks shared by the sections (no artifact access here).

A block is a dict with a `kind` both templates know: p (paragraph of our own prose), h3, table
(headers + rows of strings), img (a plot by name), list, code and example (untrusted text: model
output, questions, gold solutions; rendered only inside code blocks).
"""

from __future__ import annotations

from typing import Any


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def acc_ci(a: dict[str, Any] | None) -> str:
    """'33.0% [27.0%, 40.0%] (66/200)' from an {acc, correct, n, ci_low, ci_high} dict."""
    if not a:
        return "n/a"
    return f"{pct(a.get('acc'))} [{pct(a.get('ci_low'))}, {pct(a.get('ci_high'))}] ({a.get('correct')}/{a.get('n')})"


def fnum(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def pval(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"


def P(text: str) -> dict[str, Any]:
    return {"kind": "p", "text": text}


def H(text: str) -> dict[str, Any]:
    return {"kind": "h3", "text": text}


def T(headers: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    return {"kind": "table", "headers": headers, "rows": [[str(c) for c in r] for r in rows]}


def L(items: list[str]) -> dict[str, Any]:
    return {"kind": "list", "items": items}


def CODE(label: str, text: str) -> dict[str, Any]:
    return {"kind": "code", "label": label, "text": text}


def paired(base: list[dict[str, Any]], tuned: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """Paired counts on the ids both evaluations share, and McNemar's exact p-value."""
    from mathtune.analysis.stats import mcnemar_exact

    b = {r["id"]: bool(r.get(key)) for r in base if "id" in r}
    t = {r["id"]: bool(r.get(key)) for r in tuned if "id" in r}
    ids = [i for i in b if i in t]
    if not ids:
        return None
    from mathtune.analysis.stats import paired_counts

    c: dict[str, Any] = dict(paired_counts([b[i] for i in ids], [t[i] for i in ids]))
    c["n"] = len(ids)
    c["p"] = float(mcnemar_exact(c["fixed"], c["broken"]))
    return c
