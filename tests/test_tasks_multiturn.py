"""Multi-turn prompts: few-shot exemplars as chat turns, and the self-verification second turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from mathtune.data.gsm8k import Problem
from mathtune.io import read_jsonl
from mathtune.tasks import multiturn
from mathtune.tasks.multiturn import VERIFY_PROMPT, second_turn, selfverify_records


def test_fewshot_multiturn_messages_are_exemplar_turns_then_question():
    prompts = pytest.importorskip("mathtune.prompts")
    if not hasattr(prompts, "build_messages"):
        pytest.skip("mathtune.prompts exposes no messages builder")
    plain = prompts.get_style("cot-8shot")
    msgs = prompts.build_messages("cot-8shot-multiturn", "How many legs do 3 cats have?")
    assert len(msgs) == 2 * len(plain.exemplars) + 1 == 17
    for i, (q, a) in enumerate(plain.exemplars):
        assert msgs[2 * i] == {"role": "user", "content": q}
        assert msgs[2 * i + 1] == {"role": "assistant", "content": a}
    assert msgs[-1] == {"role": "user", "content": "How many legs do 3 cats have?"}


def test_second_turn_is_question_answer_then_verification_request():
    assert second_turn("What is 2+2?", "2+2 = 4. The answer is 4.") == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "2+2 = 4. The answer is 4."},
        {"role": "user", "content": VERIFY_PROMPT},
    ]


def _problems() -> list[Problem]:
    return [
        Problem(id=f"test-{i}", question=f"q{i}?", solution=f"... #### {g}", answer=g)
        for i, g in enumerate(["4", "10", "7", "3"])
    ]


def test_flips_are_counted_from_both_turns():
    seen: list[list[list[dict]]] = []
    first = {"q0?": "It is 4.", "q1?": "It is 9.", "q2?": "It is 7.", "q3?": "It is 5."}
    # q0 right->right, q1 wrong->right, q2 right->wrong, q3 wrong and turn 2 gives no number
    second = {
        "q0?": "The final answer is 4.",
        "q1?": "I made a mistake. The final answer is 10.",
        "q2?": "Recheck: The final answer is 8.",
        "q3?": "My solution is correct.",
    }

    def fake(chats):
        seen.append(chats)
        if len(chats[0]) == 1:
            return [first[c[0]["content"]] for c in chats]
        return [second[c[0]["content"]] for c in chats]

    recs = selfverify_records(_problems(), fake)
    # turn 2 carries the model's own turn-1 answer
    assert seen[1][1] == second_turn("q1?", "It is 9.")
    assert [(r["correct_before"], r["correct_after"]) for r in recs] == [
        (True, True),
        (False, True),
        (True, False),
        (False, False),
    ]
    assert recs[3]["after"] == "5" and recs[3]["after_source"] == "turn1"
    s = multiturn.summarize(recs, model="m", adapter=None, settings={})
    assert (s["right_to_wrong"], s["wrong_to_right"], s["changed"]) == (1, 1, 2)
    assert s["before"]["correct"] == 2 and s["after"]["correct"] == 2 and s["n"] == 4
    assert s["after_from_turn1"] == 1
    assert s["before"]["ci_low"] < 0.5 < s["before"]["ci_high"]


def test_selfverify_end_to_end_with_tiny_model(tiny_model_dir: Path, gsm8k_dir: Path, tmp_path: Path, monkeypatch):
    from mathtune.models import load_model
    from mathtune.tasks import evaluate_task

    model, tok, _ = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
    out = tmp_path / "sv"
    s = multiturn.evaluate_selfverify(
        model="tiny",
        data=str(gsm8k_dir),
        limit=3,
        output=out,
        batch_size=2,
        progress=False,
        loaded=(model, tok),
        max_new_tokens=6,
    )
    assert s["task"] == "gsm8k_selfverify" and s["n"] == 3
    assert set(s) >= {"before", "after", "right_to_wrong", "wrong_to_right", "changed", "settings"}
    recs = read_jsonl(out / "records.jsonl")
    assert [r["id"] for r in recs] == ["test-0", "test-1", "test-2"]
    assert all(isinstance(r["turn1"], str) and isinstance(r["turn2"], str) for r in recs)
    # evaluate_task dispatches here (generation faked: the random model never stops before 256 tokens)
    monkeypatch.setattr(
        multiturn, "hf_chat_generate", lambda *a, **k: lambda chats: ["The final answer is 7."] * len(chats)
    )
    s2 = evaluate_task(
        "gsm8k_selfverify",
        model="tiny",
        data=str(gsm8k_dir),
        limit=3,
        output=tmp_path / "b",
        progress=False,
        loaded=(model, tok),
    )
    assert s2["n"] == 3 and s2["changed"] == 0 and s2["settings"]["limit"] == 3
    # finished: same settings return the stored summary without generating
    assert (
        multiturn.evaluate_selfverify(
            model="tiny",
            data=str(gsm8k_dir),
            limit=3,
            output=out,
            batch_size=2,
            progress=False,
            max_new_tokens=6,
            generate=lambda chats: pytest.fail("regenerated"),
        )
        == s
    )


def test_evaluate_task_passes_the_engine_to_the_hf_backend(
    tiny_model_dir: Path, gsm8k_dir: Path, tmp_path: Path, monkeypatch
):
    """`engine` reaches make_backend; like GSM8K's, it is not part of the settings, so a finished run
    is returned as stored under another engine."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    import mathtune.generate.base
    from mathtune.tasks import evaluate_task

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engines: list[str] = []

    class FakeBackend:
        def generate(self, prompts, **kw):
            return [[SimpleNamespace(text="The final answer is 7.")] for _ in prompts]

    def fake_make_backend(name, **kw):
        assert name == "hf"
        engines.append(kw.get("engine", "<none>"))
        return FakeBackend()

    monkeypatch.setattr(mathtune.generate.base, "make_backend", fake_make_backend)
    kw = dict(model="tiny", data=str(gsm8k_dir), limit=2, progress=False, loaded=(object(), tok))
    s = evaluate_task("gsm8k_selfverify", output=tmp_path / "t", engine="transformers", **kw)
    assert engines == ["transformers"] and s["n"] == 2
    evaluate_task("gsm8k_selfverify", output=tmp_path / "d", **kw)
    assert engines == ["transformers", "auto"]
    assert "engine" not in s["settings"]
    assert evaluate_task("gsm8k_selfverify", output=tmp_path / "t", engine="fast", **kw) == s
    assert engines == ["transformers", "auto"]  # nothing regenerated
