"""Unwritable and full output directories.

Unwritable: refused with exit code 2 and one line before any model is loaded. Tests run as root
here, where chmod does not stop writes, so two other ways are used everywhere: an output path whose
parent is a regular file (ENOTDIR, real), and a simulated EACCES from the write probe; the chmod
variant runs only as a normal user.

Full (ENOSPC): simulated by making the write itself fail halfway. Whatever fails, no artifact
under its final name may hold partial content, temporary files are removed, and finished work
stays on disk for the rerun.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

import mathtune.io as mio
from faults.conftest import EVAL_KILL_AFTER, EVAL_LIMIT, eval_args, main_rc, start_cli, train_args
from mathtune.errors import UserError
from mathtune.io import JsonlAppender, atomic_write_json, atomic_write_text, read_json, read_jsonl

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_artifacts" / "small"


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if any command gets as far as loading a model."""

    def refuse(*a, **k):
        raise AssertionError("work started before the output directory was checked")

    monkeypatch.setattr("mathtune.models.load_model", refuse)
    monkeypatch.setattr("mathtune.models.resolve_model", refuse)


def one_error_line(capsys, *, after_work: bool = False) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    if after_work:  # progress output of the work done before the failure is not part of the message
        lines = [line for line in lines if line.startswith("mathtune")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mathtune: error: ")
    return lines[0]


def commands(model: Path, data: Path, out: Path) -> dict[str, list[str]]:
    sets = ["--set", f"model.spec={model}", "--set", f"data.path={data}"]
    return {
        "train": train_args(model, data, out),
        "eval": eval_args(model, data, out),
        "run": ["run", "--output", str(out), "--quiet", *sets],
    }


@pytest.mark.parametrize("command", ["train", "eval", "run"])
def test_output_under_a_regular_file_is_exit_2_one_line(command, tiny_model_dir, fault_data, tmp_path, capsys,
                                                         no_model_loading):  # fmt: skip
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    out = blocker / "run"
    assert main_rc(commands(tiny_model_dir, fault_data, out)[command]) == 2
    line = one_error_line(capsys)
    assert str(out) in line and "not writable" in line
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("command", ["train", "eval", "run"])
def test_permission_denied_is_exit_2_one_line(command, tiny_model_dir, fault_data, tmp_path, capsys, monkeypatch,
                                              no_model_loading):  # fmt: skip
    # What a non-root user sees in a read-only directory, simulated at the write probe (root ignores chmod).
    out = tmp_path / "ro"

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(mio.tempfile, "mkstemp", denied)
    assert main_rc(commands(tiny_model_dir, fault_data, out)[command]) == 2
    line = one_error_line(capsys)
    assert "not writable (Permission denied)" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
@pytest.mark.parametrize("command", ["train", "eval"])
def test_chmod_500_directory_is_exit_2_one_line(command, tiny_model_dir, fault_data, tmp_path, capsys,
                                                no_model_loading):  # fmt: skip
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main_rc(commands(tiny_model_dir, fault_data, out)[command]) == 2
        assert "not writable" in one_error_line(capsys)
    finally:
        out.chmod(0o700)


def test_report_into_an_unwritable_run_dir_is_exit_2_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(mio.tempfile, "mkstemp", denied)
    assert main_rc(["report", str(run)]) == 2
    assert "Permission denied" in one_error_line(capsys)
    assert not (run / "report.md").exists() and not (run / "report.html").exists()


# ---- a full disk -----------------------------------------------------------------------------


class _HalfThenFull:
    """A file object that writes the first half of what it is given, then fails with ENOSPC."""

    def __init__(self, real):
        self.real = real

    def __enter__(self):
        return self

    def write(self, data) -> int:
        data = bytes(data)
        self.real.write(data[: len(data) // 2])
        self.real.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __exit__(self, *exc):
        self.real.close()


def _fill_disk_on_write(monkeypatch) -> None:
    real_fdopen = os.fdopen
    monkeypatch.setattr(mio.os, "fdopen", lambda fd, *a, **k: _HalfThenFull(real_fdopen(fd, *a, **k)))


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def test_enospc_mid_write_leaves_no_partial_artifact(tmp_path, monkeypatch):
    new, old = tmp_path / "summary.json", tmp_path / "config.yaml"
    atomic_write_text(old, "the old, complete content\n")
    _fill_disk_on_write(monkeypatch)
    with pytest.raises(OSError) as e:
        atomic_write_json(new, {"n": 1, "text": "x" * 10_000})
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        atomic_write_text(old, "new content that does not fit\n" * 100)
    assert not new.exists()  # never a final-name file with half the content
    assert old.read_text() == "the old, complete content\n"  # the previous version survives whole
    assert _leftovers(tmp_path) == []  # the temporary files are gone


def test_enospc_at_fsync_leaves_no_partial_artifact(tmp_path, monkeypatch):
    # Some file systems report a full disk only when the data is flushed.
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mio.os, "fsync", full)
    with pytest.raises(OSError):
        atomic_write_json(tmp_path / "summary.json", {"n": 1})
    assert not (tmp_path / "summary.json").exists() and _leftovers(tmp_path) == []


def test_enospc_in_an_append_log_loses_only_the_torn_line(tmp_path, monkeypatch):
    path = tmp_path / "records.jsonl"
    with JsonlAppender(path) as w:
        w.write({"id": "a"})
        w.write({"id": "b"})
        real_write = w._f.write

        def half(s: str) -> int:
            real_write(s[: len(s) // 2])
            w._f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(w._f, "write", half)
        with pytest.raises(OSError):
            w.write({"id": "c", "text": "y" * 100})
        monkeypatch.undo()
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]  # the torn line is not trusted
    with JsonlAppender(path) as w:  # space freed: the next append cuts the torn tail first
        w.write({"id": "c"})
    assert [r["id"] for r in read_jsonl(path, tolerate_torn_tail=False)] == ["a", "b", "c"]


def test_disk_full_during_eval_is_one_line_and_the_rerun_finishes(tiny_model_dir, fault_data, runs, tmp_path,
                                                                  capsys, monkeypatch):  # fmt: skip
    out = tmp_path / "ev"
    real_write, n = JsonlAppender.write, {"records": 0}

    def fills_up(self, obj):
        if n["records"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it: no file name
        n["records"] += 1
        return real_write(self, obj)

    monkeypatch.setattr(JsonlAppender, "write", fills_up)
    rc = main_rc(eval_args(tiny_model_dir, fault_data, out))
    assert rc == 2
    line = one_error_line(capsys, after_work=True)
    assert "No space left on device" in line
    assert len(read_jsonl(out / "records.jsonl")) == 3 and not (out / "summary.json").exists()
    monkeypatch.setattr(JsonlAppender, "write", real_write)  # space freed
    assert main_rc(eval_args(tiny_model_dir, fault_data, out)) == 0
    assert [r["id"] for r in read_jsonl(out / "records.jsonl")] == [f"test-{i}" for i in range(EVAL_LIMIT)]
    ref = read_json(runs.eval_ref / "summary.json")
    assert read_json(out / "summary.json")["accuracy"] == ref["accuracy"]


def test_artifacts_are_readable_like_any_other_file(tmp_path):
    # mkstemp creates 0600 files; an atomically written artifact should get the usual umask mode,
    # like records.jsonl next to it, or a report shared with a team is unreadable to them.
    umask = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "summary.json", {"n": 1})
        with JsonlAppender(tmp_path / "records.jsonl") as w:
            w.write({"id": "a"})
    finally:
        os.umask(umask)
    assert oct((tmp_path / "summary.json").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "records.jsonl").stat().st_mode & 0o777) == oct(0o644)


def test_check_writable_dir_messages(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match=r"not writable \(Not a directory\)"):
        mio.check_writable_dir(f / "sub")
    assert mio.check_writable_dir(tmp_path / "new" / "deeper").is_dir()
    assert [p.name for p in (tmp_path / "new" / "deeper").iterdir()] == []  # the probe file is removed


@pytest.mark.parametrize("command", ["train", "run"])
def test_a_busy_run_directory_is_exit_2_one_line_naming_the_holder(command, tiny_model_dir, fault_data, tmp_path,
                                                                   capsys, no_model_loading, lock_holder):  # fmt: skip
    out = tmp_path / "busy"
    holder = lock_holder(out)
    assert main_rc(commands(tiny_model_dir, fault_data, out)[command]) == 2
    line = one_error_line(capsys)
    assert f"{out}: in use by another mathtune process (pid {holder.pid})" in line
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the holder's; nothing written, no config.yaml


def test_a_second_eval_into_a_busy_folder_is_refused_and_the_kill_frees_it(tiny_model_dir, fault_data, tmp_path,
                                                                           capsys):  # fmt: skip
    out = tmp_path / "ev"
    first = start_cli(eval_args(tiny_model_dir, fault_data, out), tmp_path, pause_after_records=EVAL_KILL_AFTER)
    try:
        first.wait_paused()
        before = (out / "records.jsonl").read_bytes()
        assert main_rc(eval_args(tiny_model_dir, fault_data, out)) == 2
        assert f"in use by another mathtune process (pid {first.proc.pid})" in one_error_line(capsys)
        assert (out / "records.jsonl").read_bytes() == before  # the first run's records untouched
        first.sigkill()
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    # SIGKILL released the lock (no stale lock file to remove): the same command resumes and finishes
    assert main_rc(eval_args(tiny_model_dir, fault_data, out)) == 0
    assert [r["id"] for r in read_jsonl(out / "records.jsonl")] == [f"test-{i}" for i in range(EVAL_LIMIT)]
