"""Evaluation tasks beyond GSM8K: multiple choice (ARC, MMLU, HellaSwag), GSM-Symbolic, multi-turn."""
