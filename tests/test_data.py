import json
from pathlib import Path

import pytest

from mathtune.data.formatting import render_prompt, strip_calculator_annotations, to_prompt_completion
from mathtune.data.gsm8k import load_gsm8k, split_train_val
from mathtune.errors import UserError

GSM8K_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def test_loads_local_dir(gsm8k_dir):
    probs = load_gsm8k(str(gsm8k_dir), "train")
    assert len(probs) == 24
    assert probs[0].id == "train-0"
    assert probs[0].answer == "7"
    assert probs[0].solution.endswith("#### 7")


def test_loads_file_and_limit(gsm8k_dir):
    probs = load_gsm8k(str(gsm8k_dir / "test.jsonl"), "test", limit=3)
    assert [p.id for p in probs] == ["test-0", "test-1", "test-2"]


@pytest.mark.skipif(not GSM8K_DIR.exists(), reason="shared GSM8K not present")
def test_real_gsm8k_sizes():
    assert len(load_gsm8k(str(GSM8K_DIR), "test")) == 1319
    train = load_gsm8k(str(GSM8K_DIR), "train")
    assert len(train) == 7473
    tr, va = split_train_val(train, 0.1, seed=42)
    assert len(va) == 747 and len(tr) == 7473 - 747
    assert not {p.id for p in tr} & {p.id for p in va}


def test_missing_path():
    with pytest.raises(UserError, match="data path not found"):
        load_gsm8k("./no/such/dir", "train")


def test_malformed_line_names_file_and_line(tmp_path):
    f = tmp_path / "train.jsonl"
    good = json.dumps({"question": "q?", "answer": "a\n#### 1"})
    f.write_text(good + "\n" + "{not json\n" + good + "\n")
    with pytest.raises(UserError, match=rf"{f}:2: invalid JSON"):
        load_gsm8k(str(f), "train")


def test_missing_gold_format_names_line(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"question": "q?", "answer": "a"}) + "\n" + json.dumps({"question": "q?"}) + "\n")
    with pytest.raises(UserError, match=rf"{f}:1: 'answer' has no final '#### N'"):
        load_gsm8k(str(f), "train")


def test_empty_file(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text("")
    with pytest.raises(UserError, match="holds no records"):
        load_gsm8k(str(f), "train")


def test_hub_unreachable_is_one_line():
    with pytest.raises(UserError, match="cannot load from the Hugging Face Hub"):
        load_gsm8k("openai/gsm8k", "train")


def test_split_is_seeded_and_disjoint(gsm8k_dir):
    probs = load_gsm8k(str(gsm8k_dir), "train")
    a = split_train_val(probs, 0.25, seed=1)
    b = split_train_val(probs, 0.25, seed=1)
    c = split_train_val(probs, 0.25, seed=2)
    assert a == b and a != c
    assert len(a[1]) == 6 and len(a[0]) == 18


def test_strip_annotations():
    assert strip_calculator_annotations("48/2 = <<48/2=24>>24 clips") == "48/2 = 24 clips"


def test_prompt_completion_formats(gsm8k_dir):
    p = load_gsm8k(str(gsm8k_dir), "train")[0]
    chat = to_prompt_completion(p, "chat")
    assert chat["prompt"] == [{"role": "user", "content": p.question}]
    assert "<<" not in chat["completion"][0]["content"]
    assert chat["completion"][0]["content"].endswith("#### 7")
    plain = to_prompt_completion(p, "plain", strip_annotations=False)
    assert plain["prompt"] == f"Question: {p.question}\nAnswer:"
    assert "<<" in plain["completion"]


def test_render_prompt_matches_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = render_prompt("What is 2+2?", tok, "chat")
    assert text.endswith("<|im_start|>assistant\n")
    assert "What is 2+2?" in text
