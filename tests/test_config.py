from pathlib import Path

import pytest

from mathtune.config import load_config, parse_overrides, save_config
from mathtune.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_reports_setup():
    cfg = load_config()
    assert cfg.train.epochs == 3
    assert cfg.train.learning_rate == 2e-4
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.bias) == (8, 16, 0.1, "none")
    assert cfg.train.gradient_accumulation_steps == 1
    assert cfg.train.early_stopping_patience == 5
    assert cfg.data.val_fraction == 0.1


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  learning_rate: 1.0e-3\n  batch_size: 2\n")
    cfg = load_config(p, ["train.batch_size=7", "eval.limit=20", "model.spec=foo/bar"])
    assert cfg.train.learning_rate == 1e-3
    assert cfg.train.batch_size == 7
    assert cfg.eval.limit == 20
    assert cfg.model.spec == "foo/bar"


def test_unknown_key_names_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  learnig_rate: 1.0e-3\n")
    with pytest.raises(UserError, match=r"unknown config key 'train\.learnig_rate'"):
        load_config(p)


def test_wrong_type_names_the_field():
    with pytest.raises(UserError, match=r"train\.batch_size"):
        load_config(overrides=["train.batch_size=many"])


def test_sampling_rule():
    with pytest.raises(UserError, match="temperature"):
        load_config(overrides=["eval.samples=4", "eval.temperature=0"])


def test_bad_yaml_names_the_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: [1,\n")
    with pytest.raises(UserError, match=str(p)):
        load_config(p)


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(p)


def test_override_syntax():
    assert parse_overrides(["a.b=3", "a.c=x"]) == {"a": {"b": 3, "c": "x"}}
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["nokey"])


def test_resolved_config_roundtrip(tmp_path):
    cfg = load_config(overrides=["train.epochs=1.5", "eval.tasks=[gsm8k, arc_easy]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name):
    load_config(REPO / "configs" / name)


def test_task_limit_per_task():
    cfg = load_config(
        overrides={"eval": {"tasks": ["gsm8k", "arc_easy", "mmlu"], "task_limit": {"arc_easy": 100, "mmlu": 1}}}
    )
    assert cfg.eval.limit_for("arc_easy") == 100
    assert cfg.eval.limit_for("mmlu") == 1
    assert cfg.eval.limit_for("hellaswag") is None
    assert load_config(overrides=["eval.task_limit=7"]).eval.limit_for("mmlu") == 7
    with pytest.raises(UserError, match="task_limit"):
        load_config(overrides={"eval": {"task_limit": {"mmlu": 0}}})


def test_task_limit_for_a_task_not_run_is_an_error():
    from mathtune.pipeline import other_tasks

    cfg = load_config(overrides={"eval": {"tasks": ["arc_easy"], "task_limit": {"mmlu": 1}}})
    with pytest.raises(UserError, match="'mmlu' is not in eval.tasks"):
        other_tasks(cfg)
