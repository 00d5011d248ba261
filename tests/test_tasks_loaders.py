"""Loaders for ARC, MMLU and HellaSwag: lm-eval's templates, and errors that name file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mathtune.errors import UserError
from mathtune.tasks import loaders
from mathtune.tasks.loaders import load_arc, load_hellaswag, load_mmlu

FIX = Path(__file__).parent / "fixtures"


def test_arc_template_and_numeric_labels():
    items = load_arc("arc_easy", str(FIX / "arc_small.jsonl"))
    assert [it.id for it in items] == ["Toy_arc_1", "Toy_arc_2"]
    assert items[0].context == "Question: Which object gives off its own light?\nAnswer:"
    assert items[0].choices == ["the Moon", "a mirror", "the Sun", "a window"] and items[0].gold == 2
    # labels "1".."3" with answerKey "1": gold is the index of the key among the labels
    assert items[1].gold == 0 and len(items[1].choices) == 3


def test_arc_directory_layout_and_hub_flat_rows(tmp_path: Path):
    d = tmp_path / "arc" / "ARC-Challenge"
    d.mkdir(parents=True)
    (d / "ARC-Challenge-Test.jsonl").write_text((FIX / "arc_small.jsonl").read_text())
    assert len(load_arc("arc_challenge", str(tmp_path / "arc"), limit=1)) == 1
    with pytest.raises(UserError, match="ARC-Easy-Test.jsonl"):
        load_arc("arc_easy", str(tmp_path / "arc"))
    flat = {"id": "h1", "question": "Why?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}
    assert loaders.arc_item(flat, "hub[0]").gold == 1


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {
                "id": "x",
                "question": {"stem": "Q?", "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "B"}]},
                "answerKey": "E",
            },
            "answerKey 'E'",
        ),
        ({"id": "x", "question": {"stem": "", "choices": []}, "answerKey": "A"}, "question.stem"),
        (
            {"id": "x", "question": {"stem": "Q?", "choices": [{"text": "a", "label": "A"}]}, "answerKey": "A"},
            "at least 2 choices",
        ),
    ],
)
def test_arc_malformed_row_names_file_and_line(tmp_path: Path, row: dict, message: str):
    f = tmp_path / "bad.jsonl"
    good = (FIX / "arc_small.jsonl").read_text().splitlines()[0]
    f.write_text(good + "\n\n" + json.dumps(row) + "\n")  # blank line 2: the bad row is on line 3
    with pytest.raises(UserError, match=message) as e:
        load_arc("arc_easy", str(f))
    assert f"{f}:3:" in str(e.value)


def test_arc_invalid_json_names_line(tmp_path: Path):
    f = tmp_path / "bad.jsonl"
    f.write_text((FIX / "arc_small.jsonl").read_text() + "{not json\n")
    with pytest.raises(UserError, match=f"{f}:3"):
        load_arc("arc_easy", str(f))


def test_mmlu_template_and_per_subject_limit():
    items = load_mmlu(str(FIX / "mmlu_small"), limit=1)
    assert [it.id for it in items] == ["toy_arithmetic-0", "toy_geography-0"]
    assert items[0].context == (
        "The following are multiple choice questions (with answers) about toy arithmetic.\n\n"
        "What is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer:"
    )
    assert items[0].choices == ["A", "B", "C", "D"] and items[0].gold == 1
    all_items = load_mmlu(str(FIX / "mmlu_small"))
    assert len(all_items) == 4
    assert 'Which number is even, "odd" or neither?' in all_items[1].context  # CSV quoting undone


@pytest.mark.parametrize(
    "line, message",
    [
        ("What?,1,2,3,4,E", "answer must be one of A, B, C, D"),
        ("What?,1,2,3,B", "expected 6 fields"),
        (",1,2,3,4,A", "question"),
    ],
)
def test_mmlu_malformed_row_names_file_and_line(tmp_path: Path, line: str, message: str):
    d = tmp_path / "test"
    d.mkdir()
    f = d / "toy_test.csv"
    f.write_text("What is 1+1?,1,2,3,4,B\n" + line + "\n")
    with pytest.raises(UserError, match=message) as e:
        load_mmlu(str(tmp_path))
    assert f"{f}:2 (row 2)" in str(e.value)


def test_hellaswag_preprocessing_matches_lm_eval():
    items = load_hellaswag(str(FIX / "hellaswag_small.jsonl"))
    assert [it.id for it in items] == ["hellaswag-7", "hellaswag-12"]
    # activity_label + ": " + ctx_a + " " + ctx_b.capitalize()
    assert items[0].context == "Making tea: A man fills a kettle with water. He"
    assert items[0].gold == 1
    assert items[0].choices[2] == "paints the kettle blue."  # [step] removed, double space collapsed
    # " [title]" -> ". ", other brackets dropped, capitalize() lower-cases the rest of ctx_b
    assert items[1].context == "Home and Garden: How to water a plant. Check the soil. Then pour slowly"
    assert items[1].gold == 0  # label given as a string, as on the Hub


def test_hellaswag_missing_label_names_line(tmp_path: Path):
    f = tmp_path / "hellaswag_val.jsonl"
    row = json.loads((FIX / "hellaswag_small.jsonl").read_text().splitlines()[0])
    row["label"] = ""
    f.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=f"{f}:1: 'label'"):
        load_hellaswag(str(tmp_path))


def test_hub_unreachable_asks_for_a_local_path(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="pass a local path with --data"):
        load_hellaswag("Rowan/hellaswag")
    with pytest.raises(UserError, match="allenai/ai2_arc"):
        load_arc("arc_easy", "allenai/ai2_arc")


def test_default_data_prefers_shared_copy(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert loaders.default_data("mmlu") == "cais/mmlu"
    (tmp_path / ".." / "shared" / "data" / "mmlu").mkdir(parents=True, exist_ok=True)
    assert loaders.default_data("mmlu") == str(Path("..") / "shared" / "data" / "mmlu")
