"""GSM8K train/validation examples for SFT, and the record of which ids were used.

Only the GSM8K *train* split is read here: validation is a seeded slice of it, so the test split
stays untouched until evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathtune.config import RunConfig
from mathtune.data.formatting import resolve_format, to_prompt_completion
from mathtune.data.gsm8k import Problem, load_gsm8k, split_train_val
from mathtune.io import atomic_write_json

DATA_SPLIT_NAME = "data_split.json"


@dataclass
class TrainData:
    train: list[Problem]
    val: list[Problem]
    fmt: str  # "chat" or "plain"

    def split_record(self, cfg: RunConfig) -> dict[str, Any]:
        return {
            "source": cfg.data.path,
            "source_split": "train",
            "val_fraction": cfg.data.val_fraction,
            "seed": cfg.seed,
            "train_limit": cfg.data.train_limit,
            "val_limit": cfg.data.val_limit,
            "prompt_format": self.fmt,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "train_ids": [p.id for p in self.train],
            "val_ids": [p.id for p in self.val],
        }


def select_problems(cfg: RunConfig, tokenizer: Any) -> TrainData:
    """Load the train split, hold out validation (seeded), then apply the train/val limits."""
    problems = load_gsm8k(cfg.data.path, "train")
    train, val = split_train_val(problems, cfg.data.val_fraction, cfg.seed)
    if cfg.data.train_limit is not None:
        train = train[: cfg.data.train_limit]
    if cfg.data.val_limit is not None:
        val = val[: cfg.data.val_limit]
    return TrainData(train=train, val=val, fmt=resolve_format(tokenizer, cfg.data.prompt_format))


def to_dataset(problems: list[Problem], fmt: str, *, strip_annotations: bool):
    """Prompt/completion records that TRL tokenizes (chat template applied for `chat`)."""
    from datasets import Dataset

    rows = [to_prompt_completion(p, fmt, strip_annotations=strip_annotations) for p in problems]
    return Dataset.from_list(rows)


def write_data_split(run_dir: Path, data: TrainData, cfg: RunConfig) -> Path:
    return atomic_write_json(run_dir / DATA_SPLIT_NAME, data.split_record(cfg))
