"""`mathtune eval` through the CLI entry point: exit codes, one-line errors, task dispatch."""

from __future__ import annotations

import json

import pytest

from mathtune.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cli(*args):
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


@pytest.fixture
def base_args(tiny_model_dir, gsm8k_dir):
    return ["eval", "--model", tiny_model_dir, "--data", gsm8k_dir, "--limit", "3", "--max-new-tokens", "8",
            "--batch-size", "2", "--quiet"]  # fmt: skip


def test_eval_writes_records_and_summary(base_args, tmp_path, capsys):
    out = tmp_path / "e"
    assert _cli(*base_args, "--output", out) == 0
    assert len((out / "records.jsonl").read_text().splitlines()) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and summary["settings"]["max_new_tokens"] == 8
    assert "accuracy (flexible)" in capsys.readouterr().out


def test_ctrl_c_mid_eval_is_exit_130_and_leaves_no_summary(base_args, tmp_path, capsys, monkeypatch):
    # typer, outside standalone mode, returns 130 for Ctrl-C instead of raising: it used to end as exit 0.
    from mathtune.generate.hf import HFBackend

    generate = HFBackend.generate

    def interrupted(self, *a, on_done=None, **k):
        def done(i, gens):
            on_done(i, gens)
            raise KeyboardInterrupt  # after the first item is finished

        return generate(self, *a, on_done=done, **k)

    monkeypatch.setattr(HFBackend, "generate", interrupted)
    out = tmp_path / "e"
    assert _cli(*base_args, "--output", out) == 130
    assert "interrupted; finished work is on disk" in capsys.readouterr().err
    assert not (out / "summary.json").exists()


def test_set_and_config_layering(base_args, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("eval:\n  max_new_tokens: 5\n  top_p: 0.9\n  prompt: zero-shot-cot\n")
    out = tmp_path / "e"
    # config file < --set < dedicated flags
    args = [*base_args[:7], "--config", cfg, "--set", "eval.max_new_tokens=4", "--set", "eval.prompt=cot-8shot",
            "--prompt", "chat", "--quiet", "--output", out]  # fmt: skip
    assert _cli(*args) == 0
    s = json.loads((out / "summary.json").read_text())["settings"]
    assert (s["top_p"], s["max_new_tokens"], s["prompt"]) == (0.9, 4, "chat")


def test_data_without_gold_format_is_one_line_exit_2(tiny_model_dir, tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    good = {"question": "q?", "answer": "x\n#### 1"}
    bad = {"question": "q?", "answer": "no final line here"}
    (d / "test.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    code = _cli("eval", "--model", tiny_model_dir, "--data", d, "--output", tmp_path / "e", "--quiet")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "test.jsonl:2" in err and "####" in err


def test_settings_mismatch_is_exit_2(base_args, tmp_path, capsys):
    out = tmp_path / "e"
    assert _cli(*base_args, "--output", out) == 0
    capsys.readouterr()
    assert _cli(*base_args, "--prompt", "cot-8shot", "--output", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "prompt" in err and "--overwrite" in err
    assert _cli(*base_args, "--prompt", "cot-8shot", "--output", out, "--overwrite") == 0


def test_compare_refuses_other_settings(base_args, tmp_path, capsys):
    assert _cli(*base_args, "--output", tmp_path / "a") == 0
    assert _cli(*base_args, "--output", tmp_path / "b", "--compare", tmp_path / "a" / "summary.json") == 0
    assert "difference" in capsys.readouterr().out
    code = _cli(*base_args, "--seed", "7", "--output", tmp_path / "c", "--compare", tmp_path / "a" / "summary.json")
    assert code == 2 and "seed" in capsys.readouterr().err


def test_vllm_backend_missing_is_exit_2(base_args, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    assert _cli(*base_args, "--backend", "vllm", "--output", tmp_path / "e") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vllm is not installed" in err


def test_sampling_without_temperature_is_exit_2(base_args, tmp_path, capsys):
    assert _cli(*base_args, "--samples", "4", "--output", tmp_path / "e") == 2
    assert "temperature" in capsys.readouterr().err


def test_other_tasks_are_dispatched(tiny_model_dir, tmp_path, monkeypatch):
    seen = {}

    def fake(task, **kw):
        seen.update(kw, task=task)
        return {"n": 2}

    monkeypatch.setattr("mathtune.tasks.evaluate_task", fake)
    code = _cli("eval", "--task", "arc_easy", "--model", tiny_model_dir, "--limit", "2", "--output", tmp_path / "e")
    assert code == 0
    assert seen["task"] == "arc_easy" and seen["limit"] == 2 and seen["model"] == str(tiny_model_dir)
    assert seen["data"] is None and seen["output"] == tmp_path / "e"
    assert seen["engine"] == "auto"
    # the configured hf decode path reaches the other tasks too (--engine, or eval.engine via --set)
    code = _cli("eval", "--task", "gsm8k_selfverify", "--model", tiny_model_dir, "--engine", "transformers",
                "--output", tmp_path / "f")  # fmt: skip
    assert code == 0 and seen["task"] == "gsm8k_selfverify" and seen["engine"] == "transformers"
    code = _cli("eval", "--task", "gsm_symbolic", "--model", tiny_model_dir, "--set", "eval.engine=fast",
                "--output", tmp_path / "g")  # fmt: skip
    assert code == 0 and seen["task"] == "gsm_symbolic" and seen["engine"] == "fast"


def test_engines_agree_and_a_bad_engine_is_exit_2(base_args, tmp_path, capsys):
    """`--engine transformers` and `--engine fast` write the same greedy records; an unknown
    engine is a one-line error naming the field."""
    texts = {}
    for engine in ("transformers", "fast"):
        out = tmp_path / engine
        assert _cli(*base_args, "--engine", engine, "--output", out) == 0
        texts[engine] = [json.loads(line)["generations"][0]["text"] for line in (out / "records.jsonl").open()]
    assert texts["transformers"] == texts["fast"]
    capsys.readouterr()
    assert _cli(*base_args, "--engine", "turbo", "--output", tmp_path / "x") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "engine" in err[0]
