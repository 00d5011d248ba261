"""Prompt styles: rendering, versions, stop sequences."""

from __future__ import annotations

import pytest

from mathtune.data.formatting import render_prompt
from mathtune.errors import UserError
from mathtune.prompts import build_messages, build_prompt, get_style, list_styles, stop_sequences

Q = "A shop sells {answer} pens for $3 each. How many dollars do 4 pens cost?"


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


class NoTemplate:
    chat_template = None
    eos_token = "</s>"


def test_shipped_styles_load_with_versions_and_stops():
    assert set(list_styles()) == {"chat", "cot-8shot", "cot-8shot-multiturn", "zero-shot-cot"}
    for name in list_styles():
        st = get_style(name)
        assert st.name == name
        assert isinstance(st.version, int) and st.version >= 1
        assert st.stop, name


def test_unknown_style_is_a_user_error():
    with pytest.raises(UserError, match="unknown"):
        get_style("nope")


def test_chat_is_exactly_the_training_render(tok):
    assert build_prompt("chat", Q, tok) == render_prompt(Q, tok, "chat")
    assert build_prompt("chat", Q, tok).rstrip().endswith("<|im_start|>assistant")


def test_chat_without_template_is_plain():
    assert build_prompt("chat", Q, NoTemplate()) == f"Question: {Q}\nAnswer:"


def test_cot_8shot_has_eight_exemplars_then_the_question(tok):
    p = build_prompt("cot-8shot", Q, tok)
    assert p.startswith("Q: There are 15 trees in the grove.")
    assert p.count("Q: ") == 9
    assert p.count("The answer is ") == 8
    assert p.endswith(f"\n\nQ: {Q}\nA:")
    # Exemplar text as in lm-eval gsm8k-cot (Wei et al. 2022).
    assert "A: Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars." in p
    assert "<|im_start|>" not in p  # plain text, no chat template
    assert "{answer}" in p  # question text is never re-templated
    assert {"Q:", "\n\n\n"} <= set(get_style("cot-8shot").stop)


def test_multiturn_is_17_messages_rendered_with_the_chat_template(tok):
    msgs = build_messages("cot-8shot-multiturn", Q)
    assert len(msgs) == 17
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 8 + ["user"]
    assert msgs[-1]["content"] == Q
    shots = get_style("cot-8shot").exemplars
    assert [(msgs[2 * i]["content"], msgs[2 * i + 1]["content"]) for i in range(8)] == list(shots)
    p = build_prompt("cot-8shot-multiturn", Q, tok)
    assert p == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert p.count("<|im_start|>assistant") == 9


def test_zero_shot_cot_starts_the_answer_with_the_trigger(tok):
    p = build_prompt("zero-shot-cot", Q, tok)
    assert p == render_prompt(Q, tok, "chat") + "Let's think step by step."
    assert build_prompt("zero-shot-cot", Q, NoTemplate()) == f"Q: {Q}\nA: Let's think step by step."


def test_stop_sequences_add_the_eos_text(tok):
    class OtherEos(NoTemplate):
        eos_token = "<eos>"

    assert stop_sequences("cot-8shot", OtherEos()) == [*get_style("cot-8shot").stop, "<eos>"]
    assert stop_sequences("cot-8shot", NoTemplate()).count("</s>") == 1  # already a stop: not repeated
    assert "<|im_end|>" in stop_sequences("chat", tok)
