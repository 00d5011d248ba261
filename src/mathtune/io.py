"""Artifact I/O: every file a stage writes goes through here.

Whole files are written to a temporary file in the same directory and renamed into place, so a
crash never leaves a half-written artifact that a later run would trust. Append-only logs
(metrics.jsonl, records.jsonl) are flushed and fsynced line by line; a reader drops a torn last
line (the only damage a kill can do to an append) and reports corruption anywhere else.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mathtune.errors import UserError


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(obj: Any) -> Any:
    # JSON has no NaN/Infinity; write null so every consumer can parse the file.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(_clean(obj), default=_json_default, ensure_ascii=False, indent=indent, sort_keys=False)


# mkstemp creates 0600 files; artifacts get the mode open() would give them (0666 minus the umask), so a
# shared run directory's summary.json or report.html is as readable as records.jsonl next to it.
# Read once at import: os.umask can only be read by setting it, which is not thread-safe later on.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


class JsonlAppender:
    """Appends one JSON object per line, durable line by line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_torn_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, obj: Any) -> None:
        self._f.write(dumps(obj) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _truncate_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a write interrupted by a kill) before appending."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return
        data = path.read_bytes()
        cut = data.rfind(b"\n") + 1
        f.truncate(cut)


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    with JsonlAppender(path) as w:
        w.write(obj)


def iter_jsonl(path: str | os.PathLike, *, tolerate_torn_tail: bool = True) -> Iterator[dict[str, Any]]:
    """Yield objects from a JSONL file; a bad line raises UserError naming file and line.

    A last line with no trailing newline that does not parse is the mark of an interrupted
    append and is skipped when `tolerate_torn_tail` is set.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a JSONL file") from None
    lines = raw.split(b"\n")
    torn_possible = not raw.endswith(b"\n")
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if tolerate_torn_tail and torn_possible and i == len(lines):
                return
            reason = "not UTF-8" if isinstance(e, UnicodeDecodeError) else f"invalid JSON: {e.msg}"
            raise UserError(f"{path}:{i}: {reason}") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        yield obj


def read_jsonl(path: str | os.PathLike, **kw: Any) -> list[dict[str, Any]]:
    return list(iter_jsonl(path, **kw))


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    return atomic_write_text(path, "".join(dumps(r) + "\n" for r in rows))


def unwritable(path: str | os.PathLike, error: OSError) -> UserError:
    """The one-line error for an output directory that cannot be created or written."""
    return UserError(f"{path}: output directory is not writable ({error.strerror or error})")


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Fail before any work starts when the output directory cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise unwritable(path, e) from None
    return path


def confined(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """Resolve `relative` under `root`, refusing anything that escapes it (.., absolute paths, links)."""
    root_r = Path(root).resolve()
    target = (root_r / relative).resolve()
    if target != root_r and root_r not in target.parents:
        raise UserError(f"{relative}: path escapes the run directory {root}")
    return target
