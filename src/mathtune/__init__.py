"""mathtune: LoRA fine-tuning on math word problems, with honest generation-based evaluation."""

__version__ = "0.1.0"
