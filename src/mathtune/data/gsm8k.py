"""GSM8K records from a local directory, a JSONL file, or the Hub (`openai/gsm8k`).

Each record is validated: a non-empty question and a solution whose last line is `#### N`.
A malformed line is an error naming the file and the line.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from mathtune.errors import UserError
from mathtune.io import iter_jsonl

HUB_ID = "openai/gsm8k"
_FINAL = re.compile(r"####\s*(.+?)\s*$")


@dataclass(frozen=True)
class Problem:
    id: str  # "<split>-<0-based line index>": stable across runs and subsets
    question: str
    solution: str  # the full gold solution, ending in "#### N"
    answer: str  # the text after the last "####", e.g. "18" or "1,000"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def parse_record(obj: dict, *, rid: str, where: str) -> Problem:
    q, a = obj.get("question"), obj.get("answer")
    if not isinstance(q, str) or not q.strip():
        raise UserError(f"{where}: missing or empty 'question'")
    if not isinstance(a, str) or not a.strip():
        raise UserError(f"{where}: missing or empty 'answer' (the gold solution)")
    last = a.rstrip().rsplit("\n", 1)[-1]
    m = _FINAL.search(last)
    if "####" not in a or m is None:
        raise UserError(f"{where}: 'answer' has no final '#### N' line (not GSM8K format)")
    return Problem(id=rid, question=q.strip(), solution=a.strip(), answer=m.group(1).strip())


def _local_file(path: Path, split: str) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in (f"{split}.jsonl", f"{split}_socratic.jsonl"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path}: no {split}.jsonl in this directory")
    raise UserError(f"{path}: data path not found")


def load_gsm8k(path: str, split: str = "train", *, limit: int | None = None) -> list[Problem]:
    """Load a GSM8K split. `path` is a directory holding `<split>.jsonl`, a JSONL file, or a Hub id."""
    p = Path(path).expanduser()
    if p.exists() or path.startswith((".", "/", "~")) or path.endswith(".jsonl"):
        file = _local_file(p, split)
        problems = []
        # Line numbers in errors are 1-based file lines; ids use the 0-based record index.
        for idx, obj in enumerate(iter_jsonl(file, tolerate_torn_tail=False)):
            problems.append(parse_record(obj, rid=f"{split}-{idx}", where=f"{file}:{_line_of(file, idx)}"))
            if limit is not None and len(problems) >= limit:
                break
    else:
        problems = _load_hub(path, split, limit)
    if not problems:
        raise UserError(f"{path}: the {split} split holds no records")
    return problems


def _line_of(file: Path, idx: int) -> int:
    # GSM8K files have no blank lines, so record idx sits on line idx+1; kept as a function so
    # error messages stay right if that ever changes.
    return idx + 1


def _load_hub(repo: str, split: str, limit: int | None) -> list[Problem]:
    try:
        import datasets

        ds = datasets.load_dataset(repo, "main", split=split)
    except Exception as e:  # offline, unknown id, missing split: one line for the user
        raise UserError(
            f"data '{repo}': cannot load from the Hugging Face Hub ({type(e).__name__}); "
            "pass a local directory or JSONL file instead"
        ) from None
    out = []
    for idx, row in enumerate(ds):
        out.append(parse_record(dict(row), rid=f"{split}-{idx}", where=f"{repo}[{split}][{idx}]"))
        if limit is not None and len(out) >= limit:
            break
    return out


def split_train_val(problems: list[Problem], val_fraction: float, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Seeded shuffle, then the first `val_fraction` becomes validation. Order within each part is
    the shuffled order, so `--train-limit N` takes a random-but-reproducible subset."""
    if len(problems) < 2:
        raise UserError(f"need at least 2 training records for a train/validation split, got {len(problems)}")
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(problems) * val_fraction)), len(problems) - 1)
    val = [problems[i] for i in order[:n_val]]
    train = [problems[i] for i in order[n_val:]]
    return train, val
