"""How a GSM8K problem becomes a training example and a prompt.

Training and the `chat` evaluation prompt use the same function, so they cannot drift apart:
user turn = the question, assistant turn = the gold solution (calculator annotations removed).
Models without a chat template get `Question: ...\\nAnswer: ...`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from mathtune.data.gsm8k import Problem

_CALC = re.compile(r"<<[^<>]*>>")


def strip_calculator_annotations(text: str) -> str:
    """`48/2 = <<48/2=24>>24` -> `48/2 = 24`. GSM8K's annotations drove a calculator tool;
    a model trained on them learns to emit them, which wastes tokens and confuses extraction."""
    return _CALC.sub("", text)


def training_target(problem: Problem, *, strip_annotations: bool = True) -> str:
    sol = problem.solution
    return strip_calculator_annotations(sol) if strip_annotations else sol


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_format(tokenizer: Any, requested: Literal["auto", "chat", "plain"] = "auto") -> str:
    if requested == "auto":
        return "chat" if has_chat_template(tokenizer) else "plain"
    return requested


def user_message(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def plain_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def to_prompt_completion(problem: Problem, fmt: str, *, strip_annotations: bool = True) -> dict[str, Any]:
    """A TRL prompt-completion example. `fmt='chat'` gives the conversational form, which TRL
    renders with the tokenizer's chat template; `plain` gives strings."""
    target = training_target(problem, strip_annotations=strip_annotations)
    if fmt == "chat":
        return {
            "prompt": user_message(problem.question),
            "completion": [{"role": "assistant", "content": target}],
        }
    return {"prompt": plain_prompt(problem.question), "completion": " " + target}


def render_prompt(question: str, tokenizer: Any, fmt: str) -> str:
    """The exact prompt string the model sees at evaluation for the zero-shot `chat` style."""
    if fmt == "chat":
        return tokenizer.apply_chat_template(user_message(question), tokenize=False, add_generation_prompt=True)
    return plain_prompt(question)
