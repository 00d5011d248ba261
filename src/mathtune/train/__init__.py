"""LoRA supervised fine-tuning on GSM8K (TRL SFTTrainer + PEFT), writing run-directory artifacts."""

from mathtune.train.checkpoints import find_resumable_checkpoint
from mathtune.train.trainer import train

__all__ = ["find_resumable_checkpoint", "train"]
