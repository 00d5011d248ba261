"""Log-likelihood multiple-choice scoring checked against a direct computation with the model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mathtune.io import read_jsonl
from mathtune.tasks import mc
from mathtune.tasks.loaders import MCItem, load_arc, load_hellaswag, load_mmlu

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from mathtune.models import load_model

    model, tok, _ = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
    return model, tok


def _direct_loglik(model, ctx: list[int], cont: list[int]) -> float:
    """Whole sequence in one forward, no cache: log_softmax, then gather the continuation tokens."""
    import torch

    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    # the logits at position p predict token p+1
    positions = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
    return float(logp[positions, torch.tensor(cont)].sum())


def _items() -> list[MCItem]:
    return (
        load_arc("arc_easy", str(FIX / "arc_small.jsonl"))
        + load_hellaswag(str(FIX / "hellaswag_small.jsonl"))
        + load_mmlu(str(FIX / "mmlu_small"))
    )


def test_encode_pair_is_the_tail_of_the_whole_string_encoding(tiny):
    _, tok = tiny
    ctx, cont = mc.encode_pair(tok, "Question: Which is hot?\nAnswer:", " the Sun")
    whole = tok("Question: Which is hot?\nAnswer: the Sun", add_special_tokens=False)["input_ids"]
    assert ctx + cont == whole
    assert tok.decode(cont) == " the Sun"
    # a trailing space of the context moves to the continuation (lm-eval's _encode_pair)
    ctx2, cont2 = mc.encode_pair(tok, "Answer: ", "yes")
    assert tok.decode(ctx2) == "Answer:" and tok.decode(cont2) == " yes"


def test_scores_match_direct_logits_for_every_format(tiny):
    model, tok = tiny
    items = _items()
    assert len(items) == 2 + 2 + 4
    n_multi_token = 0
    for item in items:
        pairs = [mc.encode_pair(tok, item.context, " " + c) for c in item.choices]
        ctx = pairs[0][0]
        assert all(p[0] == ctx for p in pairs)  # the context is shared by all choices
        # batch_size=2 forces several cache copies for the 4-choice items
        got = mc.score_choices(model, ctx, [p[1] for p in pairs], batch_size=2)
        want = [_direct_loglik(model, ctx, p[1]) for p in pairs]
        assert got == pytest.approx(want, abs=1e-4)
        n_multi_token += sum(len(p[1]) > 1 for p in pairs)
    assert n_multi_token > 0  # the cached path for longer choices was exercised


def test_acc_norm_divides_by_utf8_bytes(monkeypatch):
    # Log-likelihoods are negative, so dividing by more bytes favours long choices: the long choice
    # loses under acc (lower total) and wins under acc_norm (higher per byte).
    item = MCItem(id="x", context="Q:", choices=["a much longer answer", "no"], gold=0)
    monkeypatch.setattr(mc, "score_choices", lambda *a, **k: [-4.0, -3.0])
    rec = mc.score_item(None, _FakeTok(), item)
    assert rec["choice_bytes"] == [20, 2]
    assert (rec["pick"], rec["pick_norm"]) == (1, 0)
    assert (rec["correct"], rec["correct_norm"]) == (False, True)
    # bytes, not characters: "é" is two bytes
    item2 = MCItem(id="y", context="Q:", choices=["éé", "abc"], gold=0)
    monkeypatch.setattr(mc, "score_choices", lambda *a, **k: [-3.9, -3.0])
    rec2 = mc.score_item(None, _FakeTok(), item2)
    assert rec2["choice_bytes"] == [4, 3]
    assert rec2["pick_norm"] == 0  # -3.9/4 > -3.0/3; with characters (-3.9/2) it would lose


class _FakeTok:
    def __call__(self, text: str, add_special_tokens: bool = False):
        return {"input_ids": [ord(ch) for ch in text]}


def test_evaluate_mc_writes_schema_and_resumes(tiny, tmp_path: Path):
    from mathtune.tasks import evaluate_task

    out = tmp_path / "mmlu"
    s = evaluate_task(
        "mmlu", model="tiny", data=str(FIX / "mmlu_small"), limit=1, output=out, progress=False, loaded=tiny
    )
    assert s["task"] == "mmlu" and s["headline"] == "acc" and s["n"] == 2  # limit is per subject
    assert set(s["subjects"]) == {"toy_arithmetic", "toy_geography"}
    acc = s["accuracy"]["acc"]
    assert set(acc) == {"acc", "correct", "n", "ci_low", "ci_high"} and acc["n"] == 2
    assert 0.0 <= acc["ci_low"] <= acc["acc"] <= acc["ci_high"] <= 1.0
    sub_accs = [v["acc"]["acc"] for v in s["subjects"].values()]
    assert s["macro"]["acc"] == pytest.approx(sum(sub_accs) / 2)
    assert s["micro"]["acc"] == acc["acc"]
    assert s["settings"]["num_fewshot"] == 0 and s["settings"]["limit_per"] == "subject"
    recs = read_jsonl(out / "records.jsonl")
    assert [r["id"] for r in recs] == ["toy_arithmetic-0", "toy_geography-0"]
    r = recs[0]
    assert set(r) == {"id", "gold", "pick", "pick_norm", "loglik", "choice_bytes", "correct", "correct_norm", "subject"}
    assert r["gold"] == 1 and len(r["loglik"]) == 4 and r["choice_bytes"] == [1, 1, 1, 1]
    assert r["pick"] == max(range(4), key=lambda i: r["loglik"][i])

    # finished + same settings: nothing is rescored
    again = evaluate_task(
        "mmlu", model="tiny", data=str(FIX / "mmlu_small"), limit=1, output=out, progress=False, loaded=tiny
    )
    assert again == s
    # interrupted run (summary gone, one record gone): only the missing item is scored
    (out / "summary.json").unlink()
    (out / "records.jsonl").write_text(json.dumps(recs[0]) + "\n")
    resumed = evaluate_task(
        "mmlu", model="tiny", data=str(FIX / "mmlu_small"), limit=1, output=out, progress=False, loaded=tiny
    )
    assert resumed["scored_this_run"] == 1
    assert resumed["accuracy"] == s["accuracy"]
    assert len(read_jsonl(out / "records.jsonl")) == 2

    # other settings into the same directory are refused
    from mathtune.errors import UserError

    with pytest.raises(UserError, match="other settings"):
        evaluate_task(
            "mmlu", model="tiny", data=str(FIX / "mmlu_small"), limit=2, output=out, progress=False, loaded=tiny
        )


def test_arc_summary_headline(tiny, tmp_path: Path):
    from mathtune.tasks import evaluate_task

    s = evaluate_task(
        "arc_easy", model="tiny", data=str(FIX / "arc_small.jsonl"), output=tmp_path / "a", progress=False, loaded=tiny
    )
    assert s["headline"] == "acc_norm" and s["n"] == 2 and "subjects" not in s
    assert s["settings"]["template"].startswith("lm-eval:arc")


def test_unknown_task_lists_known_ones(tmp_path: Path):
    from mathtune.errors import UserError
    from mathtune.tasks import TASKS, evaluate_task

    with pytest.raises(UserError) as e:
        evaluate_task("winogrande", model="tiny", output=tmp_path)
    for name in TASKS:
        assert name in str(e.value)
    assert set(TASKS) >= {"arc_easy", "arc_challenge", "mmlu", "hellaswag", "gsm_symbolic", "gsm8k_selfverify"}


def test_scores_match_direct_logits_with_a_lora_adapter(tiny):
    """The cached path also holds for a PEFT-wrapped model (how a tuned model is evaluated)."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    # init_lora_weights=False: random A and B, so the adapter really changes the logits
    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.eval()
    item = load_hellaswag(str(FIX / "hellaswag_small.jsonl"))[0]
    pairs = [mc.encode_pair(tok, item.context, " " + c) for c in item.choices]
    got = mc.score_choices(peft_model, pairs[0][0], [p[1] for p in pairs])
    want = [_direct_loglik(peft_model, pairs[0][0], p[1]) for p in pairs]
    assert got == pytest.approx(want, abs=1e-4)
    assert got != pytest.approx(mc.score_choices(model, pairs[0][0], [p[1] for p in pairs]), abs=1e-3)
