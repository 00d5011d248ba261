"""Final-answer extraction from generated text (OWNED BY: helper 'pure'; contract below is fixed).

Contract:
    extract_strict(text: str) -> str | None      # '#### N', 'The answer is N', 'The final answer is N', '\\boxed{N}'
    extract_flexible(text: str) -> str | None    # the last number in the text
    normalize_number(s: str) -> str | None       # canonical decimal string ('1,000.00' -> '1000', '−3' -> '-3')
    answers_match(pred: str | None, gold: str) -> bool   # numeric equality after normalisation
"""

from __future__ import annotations


def extract_strict(text: str) -> str | None:
    raise NotImplementedError


def extract_flexible(text: str) -> str | None:
    raise NotImplementedError


def normalize_number(s: str) -> str | None:
    raise NotImplementedError


def answers_match(pred: str | None, gold: str) -> bool:
    raise NotImplementedError
