"""Finding a checkpoint that is safe to resume from.

A kill during `save` can leave the newest checkpoint truncated (a half-written safetensors or
optimizer file). Resuming from it would crash deep inside the Trainer, or worse, load garbage.
Each file is therefore opened and read in full before a checkpoint is trusted; a bad one is
reported and the previous checkpoint is used.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

CHECKPOINTS_DIR = "checkpoints"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
# What a Trainer checkpoint of a PEFT model must hold to be resumable. mathtune_state.json (token count
# and clock, written by MetricsLogger.on_save just after the Trainer's own files) is required too: a kill
# between the two left a checkpoint that resumed with num_tokens and elapsed_s restarting from zero
# (tests/faults/test_checkpoint_corruption.py).
REQUIRED_FILES = (
    "trainer_state.json",
    "adapter_model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "mathtune_state.json",
)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `checkpoints/checkpoint-N` directory, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _CKPT.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    return sorted(found)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be resumed from, or None when every file reads back completely."""
    for name in REQUIRED_FILES:
        if not (ckpt / name).is_file():
            return f"{name} is missing"
    for path in sorted(ckpt.iterdir()):
        if not path.is_file():
            continue
        problem = _file_problem(path)
        if problem:
            return f"{path.name}: {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    f.get_tensor(key)
        elif path.suffix in (".pt", ".pth", ".bin"):
            # torch.save writes a zip archive; checking every member's CRC detects truncation and
            # bit flips without unpickling anything.
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            if bad is not None:
                return f"corrupted member {bad}"
    except Exception as e:  # any failure to read back means: do not trust this checkpoint
        return f"unreadable ({type(e).__name__}: {str(e)[:120]})"
    return None


def find_resumable_checkpoint(run_dir: str | Path, *, warn: bool = True) -> Path | None:
    """The newest checkpoint under `run_dir/checkpoints` whose files all load; None if there is none.

    Each checkpoint skipped as damaged is reported on stderr with the reason.
    """
    for _step, ckpt in reversed(list_checkpoints(Path(run_dir))):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        if warn:
            print(
                f"mathtune: checkpoint {ckpt} is damaged ({problem}); trying the previous one",
                file=sys.stderr,
            )
    return None


def checkpoint_step(ckpt: Path) -> int:
    m = _CKPT.match(ckpt.name)
    if not m:
        raise ValueError(f"not a checkpoint directory: {ckpt}")
    return int(m.group(1))


def set_aside(ckpt: Path) -> Path:
    """Rename a damaged checkpoint so the Trainer neither resumes from it nor rotates it away.

    Kept (not deleted) so that nothing on disk is lost; the `damaged-` prefix keeps it out of the
    Trainer's `checkpoint-*` glob.
    """
    target = ckpt.with_name(f"damaged-{ckpt.name}")
    n = 1
    while target.exists():
        n += 1
        target = ckpt.with_name(f"damaged{n}-{ckpt.name}")
    ckpt.rename(target)
    return target
