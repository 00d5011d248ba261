"""An output directory takes one mathtune process at a time; the lock goes with its holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from mathtune.errors import UserError
from mathtune.locks import LOCK_NAME, dir_lock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX locks only")

TRY = "import sys\nfrom mathtune.locks import dir_lock\nwith dir_lock(sys.argv[1]): pass"


@pytest.fixture
def holder(tmp_path, lock_holder):
    """Another process holding tmp_path/'out' (killed at the end)."""
    out = tmp_path / "out"
    return out, lock_holder(out)


def test_a_second_process_is_refused_with_the_holders_pid(holder):
    out, proc = holder
    refused = rf"{out}: in use by another mathtune process \(pid {proc.pid}\)"
    with pytest.raises(UserError, match=refused), dir_lock(out):
        pass


def test_the_lock_dies_with_its_holder_even_on_sigkill(holder):
    out, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with dir_lock(out):  # no stale lock to clean up by hand
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (out / LOCK_NAME).exists()  # removed when the holder lets go


def test_reentrant_in_one_process_and_released_after_the_outermost_block(tmp_path):
    out = tmp_path / "a" / "b"  # created on the way
    probe = [sys.executable, "-c", TRY, str(out)]
    with dir_lock(out):
        with dir_lock(tmp_path / "a" / ".." / "a" / "b"):  # the same directory by another spelling
            pass
        # still held by the outer block: another process is refused (exit 2 by the CLI's rule)
        assert subprocess.run(probe, capture_output=True).returncode != 0
    assert subprocess.run(probe, capture_output=True).returncode == 0


def test_a_failed_block_removes_the_directories_it_created_and_the_lock_file(tmp_path):
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "x").write_text("x")
    with pytest.raises(UserError), dir_lock(tmp_path / "new" / "deeper"):
        raise UserError("bad config")  # a stage refusing its input before writing anything
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError), dir_lock(tmp_path / "kept"):
        raise UserError("bad config")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["x"]  # existing ones stay, as they were
    with dir_lock(tmp_path / "done"):
        (tmp_path / "done" / "artifact").write_text("y")
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["artifact"]


def test_an_output_path_that_is_a_file_is_a_user_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="output directory is not writable"), dir_lock(f / "out"):
        pass


def test_a_forked_child_outliving_its_killed_parent_does_not_keep_the_lock(tmp_path):
    # The decoding processes (generate/engine_procs.py) are forked while an evaluation holds its
    # directory. Had they kept their copy of the lock's descriptor, one outliving a SIGKILLed
    # evaluation would keep the directory locked against the resume.
    out = tmp_path / "out"
    # The child prints its pid: fork's after-child hooks (which close the lock there) have run by
    # then; the parent printing the pid could come first (seen in CI under load).
    script = (
        "import os, sys, time\nfrom mathtune.locks import dir_lock\nwith dir_lock(sys.argv[1]):\n"
        "    pid = os.fork()\n    if pid == 0:\n        print(os.getpid(), flush=True)\n        time.sleep(120)\n"
        "        os._exit(0)\n    time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait(timeout=30)
        os.kill(child, 0)  # the child lives on
        with dir_lock(out):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
