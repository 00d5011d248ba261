"""GSM-Symbolic through reasoning-gym: seeded variants, the template->GSM8K map, the paired gap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mathtune.data.gsm8k import Problem, load_gsm8k
from mathtune.tasks import symbolic

pytest.importorskip("reasoning_gym")
GSM8K_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"  # as conftest.GSM8K_DIR
needs_gsm8k = pytest.mark.skipif(not (GSM8K_DIR / "test.jsonl").is_file(), reason="real GSM8K test split absent")


@pytest.fixture(scope="module")
def gsm8k_test() -> list[Problem]:
    return load_gsm8k(str(GSM8K_DIR), "test")


@needs_gsm8k
def test_variants_are_seeded_and_reproducible(gsm8k_test):
    o1, v1, m1 = symbolic.build_items(gsm8k_test, n_templates=5, variants=3, seed=7)
    o2, v2, m2 = symbolic.build_items(gsm8k_test, n_templates=5, variants=3, seed=7)
    assert v1 == v2 and o1 == o2 and m1 == m2
    assert len(o1) == 5 and len(v1) == 15
    assert [o.id for o in o1] == [f"test-{symbolic.TEMPLATE_TO_GSM8K[g]}" for g in m1["templates"]]
    assert all(v.answer.lstrip("-").isdigit() and v.solution.rstrip().endswith(v.answer) for v in v1)
    # variants of one template differ from each other and from the original
    t0 = [v for v in v1 if m1["template_of"][v.id] == m1["templates"][0]]
    assert len({v.question for v in t0} | {o1[0].question}) == 4
    _, v3, m3 = symbolic.build_items(gsm8k_test, n_templates=5, variants=3, seed=8)
    assert [v.question for v in v3] != [v.question for v in v1]


@needs_gsm8k
def test_template_map_is_the_best_textual_match(gsm8k_test):
    """Re-derive TEMPLATE_TO_GSM8K: the template's fixed words (shared by 3 variants) vs every test question."""
    from random import Random

    generators, usable, _ = symbolic._reasoning_gym()
    assert len(usable) == 85
    test_words = [symbolic.words(p.question) for p in gsm8k_test]
    for g, idx in symbolic.TEMPLATE_TO_GSM8K.items():
        fixed = set.intersection(*(symbolic.words(generators[g](Random(s), 1.0)["question"]) for s in range(3)))
        scores = sorted(((symbolic.jaccard(fixed, w), i) for i, w in enumerate(test_words)), reverse=True)
        assert scores[0][1] == idx, g
        assert scores[0][0] >= 0.5 and scores[0][0] - scores[1][0] >= 0.04, g
        # the run-time check (one variant vs the original) passes for the real pairs
        one = symbolic.make_variant(generators, g, 0, seed=42)
        assert symbolic.jaccard(symbolic.words(one.question), test_words[idx]) >= symbolic.MIN_SIMILARITY, g


def test_wrong_gsm8k_order_is_refused(tmp_path: Path):
    from mathtune.errors import UserError

    # 1,319 records that are all the same unrelated question: no original matches its template
    rec = {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3+4=7\n#### 7"}
    (tmp_path / "test.jsonl").write_text((json.dumps(rec) + "\n") * 1319)
    test = load_gsm8k(str(tmp_path), "test")
    with pytest.raises(UserError, match="is not the original of GSM-Symbolic template"):
        symbolic.build_items(test, n_templates=3, variants=1, seed=0)


def test_robustness_gap_is_paired_by_template():
    originals = [Problem(f"o{t}", "q", "#### 1", "1") for t in range(4)]
    variants = [Problem(f"v{t}-{k}", "q", "#### 1", "1") for t in range(4) for k in range(2)]
    template_of = {f"o{t}": t for t in range(4)} | {f"v{t}-{k}": t for t in range(4) for k in range(2)}
    correct = {f"o{t}": True for t in range(4)} | {f"v{t}-{k}": (t < 2 and k == 0) for t in range(4) for k in range(2)}
    r = symbolic.robustness(correct, originals, variants, template_of, seed=0)
    assert r["original"]["acc"] == 1.0 and r["variants"]["acc"] == 0.25
    assert r["gap"] == pytest.approx(0.75)
    lo, hi = r["gap_ci"]
    assert 0.5 <= lo <= r["gap"] <= hi <= 1.0  # per-template gaps are 0.5 or 1.0
    assert (r["n_templates"], r["n_variants"]) == (4, 8)
    assert symbolic.robustness(correct, originals, variants, template_of, seed=0) == r  # seeded


@needs_gsm8k
def test_evaluate_gsm_symbolic_end_to_end(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    from mathtune.models import load_model

    model, tok, _ = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
    out = tmp_path / "sym"
    s = symbolic.evaluate_gsm_symbolic(
        model="tiny",
        data=str(GSM8K_DIR),
        limit=2,
        variants=1,
        output=out,
        progress=False,
        loaded=(model, tok),
        max_new_tokens=4,
        batch_size=4,
    )
    assert s["task"] == "gsm_symbolic" and s["n"] == 4
    rb = s["robustness"]
    assert (rb["n_templates"], rb["n_variants"]) == (2, 2)
    assert set(rb) >= {"original", "variants", "gap", "gap_ci", "n_templates", "n_variants"}
    assert json.loads((out / "summary.json").read_text())["robustness"] == json.loads(json.dumps(rb))
    # finished: returned as stored, no generation
    import mathtune.evaluate

    monkeypatch.setattr(mathtune.evaluate, "evaluate_gsm8k", lambda **k: pytest.fail("regenerated"))
    again = symbolic.evaluate_gsm_symbolic(
        model="tiny",
        data=str(GSM8K_DIR),
        limit=2,
        variants=1,
        output=out,
        progress=False,
        loaded=(model, tok),
        max_new_tokens=4,
    )
    assert again["robustness"] == json.loads(json.dumps(rb))


@needs_gsm8k
def test_evaluate_task_passes_the_engine_through(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    """evaluate_task -> evaluate_gsm_symbolic -> evaluate_gsm8k -> make_backend all see `engine`."""
    import mathtune.evaluate
    from mathtune.models import load_model
    from mathtune.tasks import evaluate_task

    model, tok, _ = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
    seen: dict[str, list] = {"evaluate_gsm8k": [], "make_backend": []}
    real_eval, real_backend = mathtune.evaluate.evaluate_gsm8k, mathtune.evaluate.make_backend

    def spy_eval(**kw):
        seen["evaluate_gsm8k"].append(kw.get("engine", "<none>"))
        return real_eval(**{**kw, "max_new_tokens": 4})  # keep the random model's generations short

    def spy_backend(name, **kw):
        seen["make_backend"].append(kw.get("engine", "<none>"))
        return real_backend(name, **kw)

    monkeypatch.setattr(mathtune.evaluate, "evaluate_gsm8k", spy_eval)
    monkeypatch.setattr(mathtune.evaluate, "make_backend", spy_backend)
    s = evaluate_task(
        "gsm_symbolic",
        model="tiny",
        data=str(GSM8K_DIR),
        limit=1,
        output=tmp_path / "sym",
        batch_size=4,
        progress=False,
        loaded=(model, tok),
        engine="transformers",
    )
    assert s["task"] == "gsm_symbolic" and s["robustness"]["n_templates"] == 1
    assert seen == {"evaluate_gsm8k": ["transformers"], "make_backend": ["transformers"]}
