"""`mathtune train` through the CLI entry point: exit codes, one-line errors, flag overrides."""

import json
from pathlib import Path

import pytest
from conftest import make_problem

from mathtune.cli import main
from mathtune.io import read_json, read_jsonl


def run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture
def config_file(tmp_path, tiny_model_dir) -> Path:
    data = tmp_path / "gsm8k"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(make_problem(i)) + "\n" for i in range(12)))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"name: tiny-cli\nmodel:\n  spec: {tiny_model_dir}\n"
        f"data:\n  path: {data}\n  val_fraction: 0.25\n  max_seq_length: 96\n"
        "train:\n  batch_size: 4\n  eval_steps: 2\n  save_steps: 2\n  logging_steps: 1\n  precision: fp32\n"
        "  max_steps: 50\n"
    )
    return cfg


def test_train_then_refuse_then_overwrite(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--config", str(config_file), "--output", str(out), "--quiet"]
    assert run_cli([*base, "--max-steps", "2", "--train-limit", "8", "--set", "train.learning_rate=0.001"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "metrics.jsonl") in printed and str(out / "adapter") in printed
    summary = read_json(out / "train_summary.json")
    assert summary["global_step"] == 2 and summary["n_train"] == 8
    saved = (out / "config.yaml").read_text()
    assert "max_steps: 2" in saved and "learning_rate: 0.001" in saved and "train_limit: 8" in saved
    assert {r["kind"] for r in read_jsonl(out / "metrics.jsonl")} == {"train", "eval"}

    before = (out / "metrics.jsonl").read_bytes()
    assert run_cli([*base, "--max-steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mathtune: error: ") and "finished train run" in err and "\n" not in err
    assert (out / "metrics.jsonl").read_bytes() == before

    assert run_cli([*base, "--max-steps", "1", "--overwrite"]) == 0
    assert read_json(out / "train_summary.json")["global_step"] == 1


def test_default_output_is_runs_name(config_file, tmp_path, monkeypatch):
    from mathtune.cli.train_cmd import build_train_config

    cfg, run_dir = build_train_config(config_file, None, resume=False, sets=None, max_steps=3)
    assert run_dir == Path("runs") / "tiny-cli" and cfg.train.max_steps == 3


def test_resume_without_config_uses_the_runs_config(tmp_path):
    from mathtune.cli.train_cmd import build_train_config

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("name: saved\ntrain:\n  learning_rate: 0.005\n")
    cfg, run_dir = build_train_config(None, run, resume=True, sets=None)
    assert cfg.name == "saved" and cfg.train.learning_rate == 0.005 and run_dir == run


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "train.batch_sise=3"], "unknown config key 'train.batch_sise'"),
        (["--report-to", "nonsense"], "train.report_to"),
        (["--max-steps", "4", "--set", "train.save_steps=3"], "must be a multiple of train.eval_steps"),
        (["--overwrite", "--resume"], "exclude each other"),
    ],
)
def test_bad_input_exits_2_with_one_line(config_file, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert run_cli(["train", "--config", str(config_file), "--output", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mathtune: error: ") and message in err and "\n" not in err
    assert not (out / "metrics.jsonl").exists()


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert run_cli(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
