import json
import os
from pathlib import Path

import pytest

from mathtune.config import load_config
from mathtune.errors import RunExistsError, UserError
from mathtune.rundir import config_differences, is_finished, prepare_run_dir, remove_stage_artifacts


def _finished_train_run(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "train_summary.json").write_text(json.dumps({"status": "finished", "global_step": 4}))
    (d / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    (d / "adapter").mkdir()
    (d / "adapter" / "adapter_config.json").write_text("{}")


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_fresh_dir_gets_config(tmp_path):
    cfg = load_config(overrides=["name=abc", "train.batch_size=3"])
    out = prepare_run_dir(tmp_path / "new" / "run", cfg, overwrite=False, resume=False, stage="train")
    assert load_config(out / "config.yaml") == cfg


def test_refuses_finished_run_and_touches_nothing(tmp_path):
    d = tmp_path / "run"
    _finished_train_run(d)
    before = _snapshot(d)
    with pytest.raises(RunExistsError, match="finished train run") as e:
        prepare_run_dir(d, load_config(), overwrite=False, resume=False, stage="train")
    assert e.value.exit_code == 2
    assert _snapshot(d) == before
    assert not (d / "config.yaml").exists()


def test_refuses_unfinished_run_without_resume(tmp_path):
    d = tmp_path / "run"
    (d / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(RunExistsError, match="--resume"):
        prepare_run_dir(d, load_config(), overwrite=False, resume=False, stage="train")


def test_other_stage_artifacts_do_not_block(tmp_path):
    d = tmp_path / "run"
    (d / "eval" / "base").mkdir(parents=True)
    prepare_run_dir(d, load_config(), overwrite=False, resume=False, stage="train")
    assert (d / "eval" / "base").is_dir()


def test_overwrite_removes_only_known_artifacts(tmp_path):
    d = tmp_path / "run"
    _finished_train_run(d)
    (d / "notes.txt").write_text("mine")
    (d / "eval" / "base").mkdir(parents=True)
    prepare_run_dir(d, load_config(), overwrite=True, resume=False, stage="train")
    assert not (d / "train_summary.json").exists()
    assert not (d / "adapter").exists()
    assert not (d / "metrics.jsonl").exists()
    assert (d / "notes.txt").read_text() == "mine"
    assert (d / "eval" / "base").is_dir()  # another stage's output
    assert (d / "config.yaml").is_file()


def test_overwrite_unlinks_a_symlinked_artifact_without_following_it(tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    d = tmp_path / "run"
    d.mkdir()
    os.symlink(outside, d / "checkpoints")
    removed = remove_stage_artifacts(d, "train")
    assert d / "checkpoints" in removed
    assert not (d / "checkpoints").exists()
    assert (outside / "keep.txt").read_text() == "keep"


def test_resume_with_different_config_names_the_fields(tmp_path):
    d = tmp_path / "run"
    prepare_run_dir(d, load_config(), overwrite=False, resume=False, stage="train")
    (d / "metrics.jsonl").write_text("")
    changed = load_config(overrides=["train.learning_rate=0.001", "lora.r=4"])
    with pytest.raises(UserError, match=r"lora\.r.*train\.learning_rate"):
        prepare_run_dir(d, changed, overwrite=False, resume=True, stage="train")


def test_resume_ignores_fields_that_do_not_change_the_result(tmp_path):
    d = tmp_path / "run"
    prepare_run_dir(d, load_config(), overwrite=False, resume=False, stage="train")
    other = load_config(overrides=["train.num_threads=1", "eval.limit=5", "report.price_per_hour=2.0"])
    assert config_differences(load_config(), other, "train") == []
    prepare_run_dir(d, other, overwrite=False, resume=True, stage="train")


def test_overwrite_and_resume_exclude_each_other(tmp_path):
    with pytest.raises(UserError, match="exclude"):
        prepare_run_dir(tmp_path / "r", load_config(), overwrite=True, resume=True, stage="train")


def test_output_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        prepare_run_dir(f, load_config(), overwrite=False, resume=False, stage="train")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_dir_fails_before_work(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(UserError, match="not writable"):
            prepare_run_dir(d, load_config(), overwrite=False, resume=False, stage="train")
    finally:
        d.chmod(0o700)


def test_is_finished_reads_status(tmp_path):
    (tmp_path / "train_summary.json").write_text('{"status": "running"}')
    assert not is_finished(tmp_path, "train")
    (tmp_path / "train_summary.json").write_text('{"status": "finished"}')
    assert is_finished(tmp_path, "train")
    assert is_finished(tmp_path, "run")


def test_unknown_stage_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError):
        prepare_run_dir(tmp_path, load_config(), overwrite=False, resume=False, stage="nope")
