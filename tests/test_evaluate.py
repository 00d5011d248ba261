"""GSM8K evaluation: records and summary per docs/artifacts.md, resume, settings checks, scoring."""

from __future__ import annotations

import json

import pytest

from mathtune.errors import SettingsMismatchError, UserError
from mathtune.evaluate import compare_summaries, evaluate_gsm8k, make_record, score_generation, summarize
from mathtune.generate.base import Generation

TIMING = ("generation_seconds", "tokens_per_second")
RECORD_KEYS = {
    "id", "question", "gold", "gold_solution", "prompt_hash", "generations", "strict", "flexible",
    "correct_strict", "correct_flexible", "reason_strict", "reason_flexible", "maj", "correct_maj",
    "agreement", "seconds",
}  # fmt: skip
GEN_KEYS = {
    "text", "strict", "flexible", "correct_strict", "correct_flexible", "reason_strict", "reason_flexible",
    "tokens", "finish_reason",
}  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    # Shared cores: 1 thread avoids OpenMP spin-waits on the tiny model's small matmuls.
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def run(tiny_model_dir, gsm8k_dir):
    def _run(output, **kw):
        args = dict(model=str(tiny_model_dir), data=str(gsm8k_dir), limit=5, max_new_tokens=12, batch_size=2,
                    output=output, progress=False)  # fmt: skip
        args.update(kw)
        return evaluate_gsm8k(**args)

    return _run


def _records(d):
    return [json.loads(line) for line in (d / "records.jsonl").read_text().splitlines()]


def _untimed(x):
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if k not in (*TIMING, "seconds")}
    if isinstance(x, list):
        return [_untimed(v) for v in x]
    return x


def test_greedy_eval_writes_records_and_summary(run, tmp_path, gsm8k_dir):
    out = tmp_path / "e"
    summary = run(out)
    recs = _records(out)
    assert [r["id"] for r in recs] == [f"test-{i}" for i in range(5)]
    gold = [json.loads(line)["answer"] for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()[:5]]
    for r, g in zip(recs, gold, strict=True):
        assert set(r) == RECORD_KEYS
        assert r["gold_solution"] == g and r["gold"] == g.rsplit("####", 1)[1].strip()
        assert len(r["generations"]) == 1 and set(r["generations"][0]) == GEN_KEYS
        gen = r["generations"][0]
        assert gen["finish_reason"] in ("stop", "length") and 1 <= gen["tokens"] <= 12
        assert r["correct_flexible"] == gen["correct_flexible"] and r["maj"] is None
        assert len(r["prompt_hash"]) == 16 and r["seconds"] > 0
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["n"] == 5 and summary["task"] == "gsm8k" and summary["headline"] == "flexible"
    s = summary["settings"]
    assert (s["prompt"], s["prompt_version"], s["samples"], s["temperature"], s["max_new_tokens"]) == (
        "chat", 1, 1, 0.0, 12,
    )  # fmt: skip
    assert s["limit"] == 5 and len(s["item_ids_sha"]) == 16
    for kind in ("strict", "flexible"):
        a = summary["accuracy"][kind]
        assert a["n"] == 5 and a["correct"] == sum(r[f"correct_{kind}"] for r in recs)
        assert 0 <= a["ci_low"] <= a["acc"] <= a["ci_high"] <= 1
    assert summary["generated_tokens"] == sum(r["generations"][0]["tokens"] for r in recs)
    assert summary["generation_seconds"] == pytest.approx(sum(r["seconds"] for r in recs))
    assert 0 <= summary["truncation_rate"] <= 1 and summary["self_consistency"] is None
    assert summary["backend"] == "hf" and summary["device"] == "cpu"
    assert summary["dtype"] == "auto" and summary["weights_dtype"] == "float32"  # asked vs what ran


def test_bf16_eval_runs_the_fast_engine_and_says_so(run, tmp_path, monkeypatch):
    """dtype bf16: the fast engine builds in bf16 (its kernels and oneDNN where the CPU has them),
    and the summary says the weights ran in bfloat16, not only what was asked."""
    import torch

    from mathtune.generate.llama_engine import LlamaEngine

    built = []
    init = LlamaEngine.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        built.append(self.dtype)

    monkeypatch.setattr(LlamaEngine, "__init__", spy)
    summary = run(tmp_path / "bf", dtype="bf16")
    assert built == [torch.bfloat16]
    assert summary["dtype"] == "bf16" and summary["weights_dtype"] == "bfloat16"
    assert summary["accuracy"]["flexible"]["n"] == 5 and summary["generated_tokens"] > 0


def test_rerun_recomputes_nothing_and_rewrites_the_identical_summary(run, tmp_path, monkeypatch):
    out = tmp_path / "e"
    run(out)
    before = {n: (out / n).read_bytes() for n in ("records.jsonl", "summary.json")}

    def no_generation(*a, **k):
        raise AssertionError("a finished evaluation must not generate again")

    monkeypatch.setattr("mathtune.evaluate.make_backend", no_generation)
    monkeypatch.setattr("mathtune.models.load_model", no_generation)
    run(out)
    assert {n: (out / n).read_bytes() for n in before} == before


def test_extending_the_limit_resumes_and_matches_an_uninterrupted_run(run, tmp_path):
    run(tmp_path / "a", limit=3)
    extended = run(tmp_path / "a", limit=5)
    full = run(tmp_path / "b", limit=5)
    assert _untimed(extended) == _untimed(full)
    assert _untimed(_records(tmp_path / "a")) == _untimed(_records(tmp_path / "b"))


def test_a_killed_run_loses_only_work_in_flight_and_resumes(run, tmp_path, monkeypatch):
    import mathtune.evaluate as ev

    real, calls = ev.make_record, []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while the third item finishes
        return real(*a, **k)

    monkeypatch.setattr(ev, "make_record", dying)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "a")
    assert len(_records(tmp_path / "a")) == 2
    assert not (tmp_path / "a" / "summary.json").exists()
    monkeypatch.setattr(ev, "make_record", real)
    resumed = run(tmp_path / "a")
    recs = _records(tmp_path / "a")
    assert [r["id"] for r in recs] == [f"test-{i}" for i in range(5)]  # each item once, in item order
    assert _untimed(resumed) == _untimed(run(tmp_path / "b"))


def test_other_settings_into_the_same_dir_are_refused_unless_overwrite(run, tmp_path):
    out = tmp_path / "e"
    run(out)
    with pytest.raises(UserError, match=r"max_new_tokens \(12 vs 8\)"):
        run(out, max_new_tokens=8)
    with pytest.raises(UserError, match="prompt"):
        run(out, prompt="cot-8shot")
    with pytest.raises(UserError, match="limit"):
        run(out, limit=3)  # would drop finished records
    s = run(out, max_new_tokens=8, overwrite=True)
    assert s["settings"]["max_new_tokens"] == 8
    assert all(r["generations"][0]["tokens"] <= 8 for r in _records(out))


def test_bad_arguments_are_user_errors(run, tmp_path):
    with pytest.raises(UserError, match="temperature"):
        run(tmp_path / "e", samples=4)
    with pytest.raises(UserError, match="unknown"):
        run(tmp_path / "e", prompt="nope")


def test_compare_summaries_names_the_differing_settings():
    base = {"settings": {"task": "gsm8k", "prompt": "chat", "seed": 42, "item_ids_sha": "a"}, "model": "m"}
    tuned = {**base, "model": "m+adapter", "adapter": "runs/x/adapter"}
    compare_summaries(base, tuned)  # model/adapter differ: that is the comparison
    other = {"settings": {**base["settings"], "prompt": "cot-8shot", "item_ids_sha": "b"}}
    with pytest.raises(SettingsMismatchError, match=r"prompt \('chat' vs 'cot-8shot'\).*item_ids_sha"):
        compare_summaries(base, other)


@pytest.mark.parametrize(
    "text,finish,reason",
    [
        ("", "stop", "no_answer"),
        ("I cannot tell.", "stop", "no_answer"),
        ("So the total is 12.\n#### 12", "stop", "wrong"),
        ("#### 18", "stop", "ok"),
        ("The answer is " + "9" * 400 + ".", "stop", "wrong|no_answer"),  # huge: wrong, never a crash
        ("#### " + "1" * 10_000, "stop", "wrong|no_answer"),
        ("First 3 + 4 = 7, then 7 *", "length", "truncated"),
        ("#### 18", "length", "ok"),  # a right answer stays right even when cut off afterwards
    ],
)
def test_bad_generations_are_counted_wrong_with_a_reason(text, finish, reason):
    s = score_generation(Generation(text, 5, finish), "18")
    assert s["reason_strict"] in reason.split("|")
    assert s["correct_strict"] is (reason == "ok")


def test_self_consistency_record_and_summary():
    from mathtune.data.gsm8k import Problem

    p = Problem("test-0", "q", "... #### 18", "18")
    gens = [Generation(t, 3, "stop") for t in ("#### 5", "#### 18", "#### 5.0", "#### 18", "none")]
    rec = make_record(p, "prompt", gens, "flexible")
    assert rec["maj"] == "5" and rec["correct_maj"] is False  # 5 and 5.0 vote together; tie -> first seen
    assert rec["agreement"] == pytest.approx(2 / 5)
    rec2 = make_record(Problem("test-1", "q", "#### 7", "7"), "p", [Generation("7", 1, "stop")] * 5, "flexible")
    summ = summarize([rec, rec2], head={}, headline="flexible", samples=5)
    sc = summ["self_consistency"]
    assert sc["k"] == 5 and sc["maj_at_k"]["correct"] == 1 and sc["pass_at_k"]["correct"] == 2
    assert sc["first_sample"]["correct"] == 1
    assert sc["mean_agreement"] == pytest.approx((0.4 + 1.0) / 2)
    assert summ["truncation_rate"] == 0 and summ["invalid_rate"]["strict"] == 0.5


def test_sampled_eval_is_reproducible(run, tmp_path):
    kw = dict(limit=3, samples=3, temperature=1.0, max_new_tokens=6)
    a = run(tmp_path / "a", **kw)
    b = run(tmp_path / "b", batch_size=5, **kw)
    assert _untimed(_records(tmp_path / "a")) == _untimed(_records(tmp_path / "b"))
    assert _untimed(a) == _untimed(b)
    recs = _records(tmp_path / "a")
    assert all(len(r["generations"]) == 3 and r["agreement"] is not None for r in recs)
    assert len({g["text"] for r in recs for g in r["generations"]}) > 1
    assert a["self_consistency"]["k"] == 3


def test_problems_list_replaces_the_data_file(run, tmp_path):
    from mathtune.data.gsm8k import Problem

    probs = [Problem(f"sym-{i}", f"What is {i} + 1?", f"#### {i + 1}", str(i + 1)) for i in range(3)]
    s = run(tmp_path / "e", problems=probs, data="gsm-symbolic", limit=None, task="gsm-symbolic")
    assert [r["id"] for r in _records(tmp_path / "e")] == ["sym-0", "sym-1", "sym-2"]
    assert s["settings"]["task"] == "gsm-symbolic" and s["n"] == 3


@pytest.mark.integration
def test_smollm2_greedy_eval_on_real_gsm8k(tmp_path, smollm2_dir):
    """SmolLM2 on 4 GSM8K test items: well-formed answers, and the decode loop's greedy text equals
    transformers' generate for the same prompt."""
    import torch
    from conftest import GSM8K_DIR

    from mathtune.models import load_model
    from mathtune.prompts import build_prompt

    if not (GSM8K_DIR / "test.jsonl").is_file():
        pytest.skip("GSM8K data not present")
    model, tok, _ = load_model(str(smollm2_dir))
    out = tmp_path / "e"
    s = evaluate_gsm8k(model="smollm2-135m", data=str(GSM8K_DIR), limit=4, max_new_tokens=160, batch_size=4,
                       output=out, progress=False, loaded=(model, tok))  # fmt: skip
    recs = _records(out)
    assert [r["id"] for r in recs] == [f"test-{i}" for i in range(4)] and s["n"] == 4
    assert all(r["generations"][0]["text"].strip() for r in recs)
    assert sum(r["flexible"] is not None for r in recs) >= 3  # an instruct model states numbers
    assert any(r["generations"][0]["finish_reason"] == "stop" for r in recs)  # and ends with EOS
    first = recs[0]
    enc = tok(build_prompt("chat", first["question"], tok), return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=160, do_sample=False, pad_token_id=tok.pad_token_id)
    ids = ref[0, enc["input_ids"].shape[1] :].tolist()
    if ids[-1] == tok.eos_token_id:
        ids = ids[:-1]
    assert first["generations"][0]["text"] == tok.decode(ids, skip_special_tokens=False)
