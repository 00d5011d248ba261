"""`mathtune eval` SIGKILLed mid-run and run again: every item exactly once, the same records and summary.

The killed run (tests/faults/conftest.py) had written 3 of 8 records (batch size 2, so several
batches had run) and was killed while the 4th was being scored. Running the same command again
resumes: it must generate only the missing items and end with what an uninterrupted run writes.

Wall-clock fields (`seconds` per record; `generation_seconds` and `tokens_per_second`, which the
summary derives from them) are measurements of this machine at that moment: two uninterrupted runs
differ in them too (see test_determinism.py), so they are compared for consistency, not equality.
"""

from __future__ import annotations

import json
import shutil

import pytest

from faults.conftest import EVAL_KILL_AFTER, EVAL_LIMIT, WALL_CLOCK, eval_args, main_rc, without
from mathtune.io import read_json, read_jsonl

IDS = [f"test-{i}" for i in range(EVAL_LIMIT)]


def test_killed_eval_kept_its_finished_records_and_wrote_no_summary(runs):
    killed = runs.eval_killed
    assert len(read_jsonl(killed / "records.jsonl")) == EVAL_KILL_AFTER
    assert (killed / "settings.json").is_file()
    assert not (killed / "summary.json").exists()


def test_sigkill_mid_eval_then_rerun_gives_each_item_once_and_the_same_results(runs):
    ref, got = runs.eval_ref, runs.eval_resumed
    recs = read_jsonl(got / "records.jsonl")
    assert [r["id"] for r in recs] == IDS  # each item exactly once, in item order
    ref_recs = read_jsonl(ref / "records.jsonl")
    assert without(recs, {"seconds"}) == without(ref_recs, {"seconds"})
    # The items finished before the kill are kept as they were, not generated again.
    before = read_jsonl(runs.eval_killed / "records.jsonl")
    by_id = {r["id"]: r for r in recs}
    assert all(by_id[r["id"]] == r for r in before)

    s_ref, s_got = read_json(ref / "summary.json"), read_json(got / "summary.json")
    assert without(s_got, WALL_CLOCK) == without(s_ref, WALL_CLOCK)
    # The only fields allowed to differ are the wall-clock ones, and they stay self-consistent.
    assert {k for k in s_ref if s_ref[k] != s_got[k]} <= WALL_CLOCK
    assert s_got["generation_seconds"] == pytest.approx(sum(r["seconds"] for r in recs))
    assert read_json(got / "settings.json") == read_json(ref / "settings.json")


def test_torn_last_record_from_a_kill_mid_write_is_dropped_and_redone(runs, tiny_model_dir, fault_data, tmp_path):
    # A kill inside write() can leave the last line cut short: simulate it, then resume in-process.
    run = tmp_path / "torn"
    shutil.copytree(runs.eval_killed, run)
    full = read_jsonl(runs.eval_ref / "records.jsonl")
    with open(run / "records.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(full[EVAL_KILL_AFTER])[:40])  # half a record, no newline
    assert main_rc(eval_args(tiny_model_dir, fault_data, run)) == 0
    recs = read_jsonl(run / "records.jsonl", tolerate_torn_tail=False)  # every line whole now
    assert [r["id"] for r in recs] == IDS
    assert without(recs, {"seconds"}) == without(full, {"seconds"})


def test_rerunning_the_finished_eval_rewrites_the_identical_files(runs, tiny_model_dir, fault_data, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    run = tmp_path / "again"
    shutil.copytree(runs.eval_resumed, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def no_generation(*a, **k):
        raise AssertionError("a finished evaluation must not load a model again")

    monkeypatch.setattr("mathtune.models.load_model", no_generation)
    assert main_rc(eval_args(tiny_model_dir, fault_data, run)) == 0
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
