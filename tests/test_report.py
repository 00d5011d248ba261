"""The report built from a hand-made run directory (tests/fixtures/run_artifacts/small).

The fixture's tuned model output holds `<script>alert(1)</script>`, a `[click](javascript:...)`
link and an `<img onerror>` tag: none of them may reach the HTML as markup.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from mathtune.errors import UserError
from mathtune.references import hub_id_for_spec, load_references, references_for
from mathtune.report.build import build_report

FIXTURE = Path(__file__).parent / "fixtures" / "run_artifacts" / "small"
SECTIONS = [
    "1. Overview",
    "2. Training",
    "3. Task accuracy (GSM8K)",
    "3a. General ability",
    "3b. GSM-Symbolic robustness",
    "3c. Self-verification",
    "4. Error analysis",
    "5. References",
    "6. Conclusions and next steps",
    "Appendix",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[str, str, Path]:
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(FIXTURE, run)
    md, html = build_report(run)
    return md.read_text(encoding="utf-8"), html.read_text(encoding="utf-8"), run


def test_every_section_in_both_files(built):
    md, html, _ = built
    for title in SECTIONS:
        assert f"## {title}" in md, title
        assert f"<h2>{title}</h2>" in html, title


def test_html_escapes_model_output(built):
    _, html, _ = built
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as text
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert 'href="javascript' not in html
    # the only <script>-like thing allowed is none at all; the page loads nothing from outside
    assert "<script" not in html
    assert not re.search(r"""(src|href)=["']https?://""", html)


def test_markdown_keeps_model_output_in_fences(built):
    md, _, _ = built
    # the injection sits inside a fenced code block: the line before it opens a fence
    lines = md.splitlines()
    i = next(n for n, line in enumerate(lines) if "<script>alert(1)</script>" in line)
    opened = [n for n, line in enumerate(lines[:i]) if line.startswith("```")]
    assert opened and len(opened) % 2 == 1  # an odd number of fence lines before it: inside a block
    j = next(n for n, line in enumerate(lines) if "javascript:alert(1)" in line)
    assert len([x for x in lines[:j] if x.startswith("```")]) % 2 == 1


def test_plots_embedded_as_data_uris(built):
    md, html, run = built
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 4
    import base64

    assert all(base64.b64decode(u)[:8] == b"\x89PNG\r\n\x1a\n" for u in uris)
    for name in ("learning_curve", "accuracy", "errors", "accuracy_by_steps"):
        assert (run / "plots" / f"{name}.png").is_file()
        assert f"(plots/{name}.png)" in md


def test_numbers_come_from_the_artifacts(built):
    md, _, _ = built
    # GSM8K: base 4/8, tuned 2/8 flexible; paired: 1 fixed, 3 broken -> McNemar p = 0.625
    assert "50.0% [21.5%, 78.5%] (4/8)" in md.replace("\\[", "[").replace("\\]", "]")
    assert "| 8 | 1 | 1 | 3 | 3 | p = 0.625 |" in md
    # validation loss 1.70 -> 1.05: 38.2% lower; trend on the final window is negative
    assert "1.7000 (step 0)" in md and "38.2%" in md
    assert "still improving" in md and "Train longer" in md
    # cost: 332 s of stages at $2.50/h
    assert "$0.23 at $2.50/h" in md
    # error categories (base, tuned): counts and shares of the wrong answers
    assert "| arithmetic slip | 0 (0.0%) | 1 (16.7%) |" in md
    assert "| truncated | 0 (0.0%) | 1 (16.7%) |" in md
    # ARC drop reported as a drop
    assert "DROP of 20.0 points" in md
    # token accuracy labelled as not task accuracy
    assert "NOT task accuracy" in md
    # references with protocol and source
    assert "5-shot, lighteval" in md and "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct" in md
    # stages not in the fixture say "not run"
    assert "GSM-Symbolic robustness: not run" in md and "Self-verification: not run" in md


def test_missing_stages_say_not_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURE / "config.yaml", run / "config.yaml")
    md_path, html_path = build_report(run)
    md = md_path.read_text()
    assert "Training: not run" in md
    assert "GSM8K evaluation: not run" in md
    assert "Error analysis: not run" in md
    assert "General ability (ARC, MMLU, HellaSwag): not run" in md
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in html_path.read_text()


def test_not_a_run_dir(tmp_path):
    with pytest.raises(UserError, match="no config.yaml"):
        build_report(tmp_path)


def test_cli_report_rebuilds_from_artifacts(tmp_path, capsys):
    from mathtune.cli import main

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    main(["report", str(run)])
    out = capsys.readouterr().out
    assert f"report: {run / 'report.html'}" in out
    assert (run / "report.md").is_file() and (run / "report.html").is_file()
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "missing")])
    assert e.value.code == 2


def test_references_have_protocol_and_source():
    refs = load_references()
    assert refs, "packaged references missing"
    for items in refs.values():
        for r in items:
            assert r.protocol and r.source.startswith("https://") and r.harness
    assert hub_id_for_spec("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id_for_spec("meta-llama/Llama-3.2-3B") == "meta-llama/Llama-3.2-3B"
    assert hub_id_for_spec("/models/Llama-3.2-3B-Instruct") == "meta-llama/Llama-3.2-3B-Instruct"
    hub, items = references_for("meta-llama/Llama-3.2-3B-Instruct")
    assert any(r.value == 77.7 and r.shots == 8 and r.cot for r in items)
    assert references_for("some/unknown-model") == ("some/unknown-model", [])


def _acc(k: int, n: int) -> dict:
    from mathtune.analysis.stats import wilson_interval

    lo, hi = wilson_interval(k, n)
    return {"acc": k / n, "correct": k, "n": n, "ci_low": lo, "ci_high": hi}


def test_symbolic_selfverify_and_mmlu_sections(tmp_path):
    import json

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)

    def put(tag: str, summary: dict, records: list[dict] | None = None) -> None:
        d = run / "eval" / tag
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(summary))
        if records is not None:
            (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    for tag, k_var in (("base", 3), ("tuned", 6)):
        put(
            f"{tag}-gsm_symbolic",
            {
                "task": "gsm_symbolic",
                "n": 30,
                "robustness": {
                    "original": _acc(4, 10),
                    "variants": _acc(k_var, 20),
                    "gap": 0.4 - k_var / 20,
                    "gap_ci": [-0.1, 0.3],
                    "n_templates": 10,
                    "n_variants": 20,
                },
            },
        )
        put(
            f"{tag}-gsm8k_selfverify",
            {
                "task": "gsm8k_selfverify",
                "n": 10,
                "before": _acc(3, 10),
                "after": _acc(4, 10),
                "right_to_wrong": 1,
                "wrong_to_right": 2,
                "changed": 3,
            },
        )
        oks = [True, True, False, False] if tag == "base" else [True, False, False, False]
        recs = [{"id": f"m-{i}", "subject": "algebra", "correct": ok, "correct_norm": ok} for i, ok in enumerate(oks)]
        k = sum(oks)
        put(
            f"{tag}-mmlu",
            {
                "task": "mmlu",
                "n": 4,
                "headline": "acc",
                "accuracy": {"acc": _acc(k, 4), "acc_norm": _acc(k, 4)},
                "subjects": {"algebra": {"acc": _acc(k, 4)}},
                "macro": {"acc": k / 4, "acc_norm": k / 4},
                "micro": {"acc": k / 4, "acc_norm": k / 4},
            },
            recs,
        )
    md = build_report(run)[0].read_text()
    assert "GSM-Symbolic robustness: not run" not in md and "Self-verification: not run" not in md
    assert "+25.0 pp" in md and "+10.0 pp" in md  # gaps 0.4-0.15 and 0.4-0.3
    assert "| base | 10 | 30.0% " in md.replace("\\[", "[")
    assert "mmlu: DROP of 25.0 points" in md
    assert "mmlu base (1 subjects): acc macro average 50.0%" in md
    assert "MMLU: measured in this run" in md and "GSM-Symbolic robustness: measured in this run" in md


def test_the_accuracy_section_names_the_weights_precision_and_flags_a_mix():
    from types import SimpleNamespace

    from mathtune.report.sections import _weights_note

    def ev(dtype):
        return SimpleNamespace(summary={"weights_dtype": dtype} if dtype else {})

    assert _weights_note(ev("float32"), ev("float32")) == ", weights in float32"
    assert _weights_note(ev("bfloat16"), None) == ", weights in bfloat16"
    assert "NOT the same precision" in _weights_note(ev("float32"), ev("bfloat16"))
    assert "NOT the same precision" in _weights_note(ev("float32"), ev(None))  # one side unknown
    assert _weights_note(ev(None), ev(None)) == ""  # runs from before weights_dtype was recorded
