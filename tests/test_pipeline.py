"""`mathtune run` end to end on the tiny random Llama: base eval -> train -> tuned eval -> report."""

from __future__ import annotations

import json

import yaml

from mathtune.io import read_json

SECTIONS = [
    "1. Overview",
    "2. Training",
    "3. Task accuracy (GSM8K)",
    "4. Error analysis",
    "5. References",
    "6. Conclusions and next steps",
    "Appendix",
]


def test_run_pipeline_tiny(tmp_path, tiny_model_dir, gsm8k_dir, capsys):
    from mathtune.cli import main

    cfg = {
        "name": "tiny",
        "model": {"spec": str(tiny_model_dir)},
        "data": {"path": str(gsm8k_dir), "val_limit": 2},
        "train": {
            "epochs": 1,
            "batch_size": 4,
            "eval_batch_size": 2,
            "eval_steps": 2,
            "logging_steps": 1,
            "save_steps": 2,
        },
        "eval": {"max_new_tokens": 16, "batch_size": 4},
    }
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    argv = [
        "run",
        "--config",
        str(cfg_path),
        "--output",
        str(run),
        "--train-limit",
        "8",
        "--eval-limit",
        "4",
        "--quiet",
    ]
    main(argv)
    out = capsys.readouterr().out
    assert f"report: {run / 'report.html'}" in out
    assert "GSM8K flexible (base)" in out

    md, html = (run / "report.md").read_text(), (run / "report.html").read_text()
    for title in SECTIONS:
        assert f"## {title}" in md and f"<h2>{title}</h2>" in html
    assert html.count("data:image/png;base64,") == 4

    base, tuned = read_json(run / "eval/base/summary.json"), read_json(run / "eval/tuned/summary.json")
    assert base["n"] == tuned["n"] == 4 and base["settings"] == tuned["settings"]
    assert tuned["adapter"] and base["adapter"] is None
    ts = read_json(run / "train_summary.json")
    assert ts["n_train"] == 8 and ts["global_step"] == 2

    stages = read_json(run / "stages.json")
    assert stages["status"] == "finished"
    assert list(stages["stages"]) == ["eval-base", "train", "eval-tuned", "report"]
    assert all(s["status"] == "done" and s["seconds"] >= 0 for s in stages["stages"].values())
    first = {k: v["seconds"] for k, v in stages["stages"].items()}

    # Rerun: every finished stage is skipped (its timing kept), only the report is rebuilt.
    mtime = (run / "eval/tuned/records.jsonl").stat().st_mtime_ns
    n_metrics = len((run / "metrics.jsonl").read_text().splitlines())
    main(argv)
    again = read_json(run / "stages.json")
    assert {k: v["seconds"] for k, v in again["stages"].items() if k != "report"} == {
        k: v for k, v in first.items() if k != "report"
    }
    assert (run / "eval/tuned/records.jsonl").stat().st_mtime_ns == mtime
    assert len((run / "metrics.jsonl").read_text().splitlines()) == n_metrics
    records = [json.loads(x) for x in (run / "eval/tuned/records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [f"test-{i}" for i in range(4)]


def test_other_tasks_get_the_configured_engine(tmp_path, monkeypatch):
    """`mathtune run` evaluates the non-GSM8K tasks with eval.engine, as it does GSM8K."""
    from types import SimpleNamespace

    from mathtune import pipeline
    from mathtune.config import RunConfig

    seen = {}

    def fake(task, **kw):
        seen.update(kw, task=task)
        return {"n": 1}

    monkeypatch.setattr("mathtune.tasks.evaluate_task", fake)
    cfg = RunConfig.model_validate({"eval": {"engine": "transformers"}})
    holder = SimpleNamespace(adapter=None, get=lambda: ("model", "tok", "resolved"))
    pipeline._eval_task(cfg, "gsm8k_selfverify", tmp_path / "sv", holder, progress=False)
    assert seen["task"] == "gsm8k_selfverify" and seen["engine"] == "transformers"
    assert seen["loaded"] == ("model", "tok", "resolved")
