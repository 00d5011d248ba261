"""One process at a time per output directory.

Two processes writing one directory (a second `mathtune run` on the same --output, an eval started
twice into one folder) would interleave records, checkpoints and summaries. So every stage that
writes a directory holds an exclusive lock on `<dir>/.lock` while it works. It is an OS lock
(`fcntl.flock`): it goes with its process, SIGKILL included, so a crash never leaves a stale lock
to clean up. The file holds the holder's pid (for the error message) and is removed when the
holder lets go. Within one process the lock is re-entrant: the pipeline holds its run directory
while its stages take it again.

Reading is never locked: `mathtune report` may render a run that is still training, as its
artifacts are written atomically. On systems without `fcntl` (Windows) there is no lock.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from mathtune.errors import UserError
from mathtune.io import unwritable

LOCK_NAME = ".lock"

F = TypeVar("F", bound=Callable[..., Any])

_held: dict[Path, list[int]] = {}  # resolved directory -> [descriptor, depth]
_guard = threading.Lock()


def _forget_in_child() -> None:
    """After a fork (engine_procs' decoding processes): the child closes its copies of the lock
    descriptors. An flock lasts while any descriptor of it is open, so a child that outlived its
    parent would otherwise keep the directory locked."""
    global _guard
    _guard = threading.Lock()  # another thread may have held it at the fork
    for fd, _ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


@contextlib.contextmanager
def dir_lock(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold `directory`'s lock (creating the directory) for the block; a UserError (exit 2) naming
    the directory and the other process when another process holds it. The lock file is removed
    when the block ends, and so are the directories this call created if the block failed and they
    are still empty: a refused command leaves nothing behind."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks here: work unlocked, as before
        yield Path(directory)
        return
    path = Path(directory)
    made = _missing(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise unwritable(path, e) from None
    key = path.resolve()
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        try:
            entry = [_acquire(fcntl, path, key / LOCK_NAME), 1]
        except BaseException:
            _remove_empty(made)
            raise
        with _guard:
            _held[key] = entry
    failed = True
    try:
        yield path
        failed = False
    finally:
        with _guard:
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[key]
        if last:
            with contextlib.suppress(OSError):
                os.unlink(key / LOCK_NAME)  # while still held: see _acquire
            os.close(entry[0])  # closing the descriptor releases the lock
            if failed:
                _remove_empty(made)


def holds_dir_lock(param: str) -> Callable[[F], F]:
    """Decorator: each call holds `dir_lock` on its argument named `param` (the output directory)."""

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with dir_lock(signature.bind(*args, **kwargs).arguments[param]):
                return fn(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return wrap


def _acquire(fcntl, path: Path, lock: Path) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise unwritable(path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = "another mathtune process" + (f" (pid {holder})" if holder.isdigit() else "")
            raise UserError(f"{path}: in use by {who}; wait for it or choose another output directory") from None
        # The previous holder removes the file before it lets go; if that happened between our open
        # and our flock, this lock is on a file nobody else can find: start again on the new one.
        try:
            here, there = os.fstat(fd), os.stat(lock)
            if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def _missing(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, deepest first."""
    out = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:
        try:
            d.rmdir()
        except OSError:  # not empty (or gone): leave it and everything above it
            return
