"""Prompt styles as data: one small YAML file per style in this package.

Each file carries a `version`, bumped (with a changelog line in the file) whenever the wording, the
stop sequences or the way answers are extracted changes, as lm-evaluation-harness does with
`metadata.version`. The style name and version are recorded with every evaluation result.

Kinds:
- `chat`: zero-shot; exactly `mathtune.data.formatting.render_prompt` (the training format).
- `fewshot`: plain-text exemplars "Q: ...\\nA: ..." joined by `fewshot_delimiter`, then the question.
- `multiturn`: the exemplars of another style as user/assistant chat turns, then the question.
- `zero-shot-cot`: the answer is started with a trigger phrase ("Let's think step by step.").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from mathtune.data.formatting import has_chat_template, render_prompt, resolve_format
from mathtune.errors import UserError

_KINDS = ("chat", "fewshot", "multiturn", "zero-shot-cot")


@dataclass(frozen=True)
class PromptStyle:
    name: str
    version: int
    kind: str
    description: str = ""
    stop: tuple[str, ...] = ()
    question_template: str = "Q: {question}\nA:"
    answer_template: str = " {answer}"
    fewshot_delimiter: str = "\n\n"
    trigger: str = ""
    exemplars: tuple[tuple[str, str], ...] = field(default=())  # (question, answer) pairs


def _fill(template: str, **values: str) -> str:
    # str.replace, not str.format: a template may contain other braces, and question text is never
    # re-parsed as a template.
    for k, v in values.items():
        template = template.replace("{" + k + "}", v)
    return template


def _read(name: str) -> dict[str, Any]:
    try:
        text = resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        raise UserError(f"prompt style '{name}': unknown (known: {', '.join(list_styles())})") from None
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise UserError(f"prompt style '{name}': {name}.yaml is not a mapping")
    return data


def list_styles() -> list[str]:
    """Names of the shipped prompt styles."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


@functools.cache
def get_style(name: str) -> PromptStyle:
    """Load a prompt style by name (cached; the files ship with the package)."""
    data = _read(name)
    kind = data.get("kind")
    if kind not in _KINDS:
        raise UserError(f"prompt style '{name}': kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    if not isinstance(data.get("version"), int):
        raise UserError(f"prompt style '{name}': missing integer 'version'")
    source = data
    if "exemplars_from" in data:
        # The multiturn style shares its exemplars with the plain few-shot style, so the two can
        # never hold different texts.
        source = _read(data["exemplars_from"])
    exemplars = tuple((str(e["question"]), str(e["answer"])) for e in source.get("exemplars") or [])
    if kind in ("fewshot", "multiturn") and not exemplars:
        raise UserError(f"prompt style '{name}': a {kind} style needs exemplars")
    return PromptStyle(
        name=str(data.get("name", name)),
        version=int(data["version"]),
        kind=kind,
        description=str(data.get("description", "")),
        stop=tuple(str(s) for s in data.get("stop") or ()),
        question_template=str(data.get("question_template", PromptStyle.question_template)),
        answer_template=str(data.get("answer_template", PromptStyle.answer_template)),
        fewshot_delimiter=str(data.get("fewshot_delimiter", PromptStyle.fewshot_delimiter)),
        trigger=str(data.get("trigger", "")),
        exemplars=exemplars,
    )


def _as_style(style: str | PromptStyle) -> PromptStyle:
    return style if isinstance(style, PromptStyle) else get_style(style)


def build_messages(style: str | PromptStyle, question: str) -> list[dict[str, str]]:
    """The chat messages of a multiturn style: 8 exemplar user/assistant pairs, then the question."""
    st = _as_style(style)
    msgs: list[dict[str, str]] = []
    for q, a in st.exemplars:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": question})
    return msgs


def _fewshot_text(st: PromptStyle, question: str) -> str:
    shots = [_fill(st.question_template, question=q) + _fill(st.answer_template, answer=a) for q, a in st.exemplars]
    return st.fewshot_delimiter.join([*shots, _fill(st.question_template, question=question)])


def build_prompt(style: str | PromptStyle, question: str, tokenizer: Any) -> str:
    """The exact prompt string the model sees for `question` under `style`."""
    st = _as_style(style)
    if st.kind == "chat":
        return render_prompt(question, tokenizer, resolve_format(tokenizer, "auto"))
    if st.kind == "fewshot":
        return _fewshot_text(st, question)
    if st.kind == "multiturn":
        if not has_chat_template(tokenizer):
            # Without a chat template the turns collapse to the plain few-shot text.
            return _fewshot_text(st, question)
        return tokenizer.apply_chat_template(build_messages(st, question), tokenize=False, add_generation_prompt=True)
    # zero-shot-cot
    if has_chat_template(tokenizer):
        return render_prompt(question, tokenizer, "chat") + st.trigger
    return _fill(st.question_template, question=question) + " " + st.trigger


def stop_sequences(style: str | PromptStyle, tokenizer: Any = None) -> list[str]:
    """The style's stop strings plus the tokenizer's EOS text (EOS also stops by token id)."""
    st = _as_style(style)
    stops = list(st.stop)
    eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
    if eos and eos not in stops:
        stops.append(eos)
    return stops
