"""CPU speed settings for training, each one measured in bench/train.py before becoming a default.

None of them changes what a training step computes for a given batch: length grouping changes
which examples share a batch (less padding), the compact LM head skips work whose result is
multiplied by zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Tuning:
    """Speed knobs; None means mathtune's default for the device."""

    group_by_length: bool | None = None  # default: on
    compact_lm_head: bool | None = None  # default: on

    def resolved(self, device: str) -> Tuning:
        return Tuning(
            group_by_length=True if self.group_by_length is None else self.group_by_length,
            compact_lm_head=True if self.compact_lm_head is None else self.compact_lm_head,
        )


@contextlib.contextmanager
def compact_lm_head(enabled: bool = True) -> Iterator[bool]:
    """Score only the positions that carry a label in TRL's fused LM head.

    TRL projects hidden states onto the vocabulary in tiles without materialising the logits. It
    gathers the labelled positions first only where its Triton kernel runs (CUDA/XPU); elsewhere it
    scores every position, prompt and padding included, and masks the result afterwards. With
    completion-only loss about half of a GSM8K row is prompt, so on CPU the gather skips a large
    share of the vocabulary projection (49k columns for SmolLM2) for the same loss and gradients.
    The switch is TRL's own module-level choice, restored on exit; if TRL renames it, this does
    nothing and training runs as before.
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:  # pragma: no cover - trl is a dependency
        yield False
        return
    original = getattr(trl_utils, "_use_triton", None)
    if not enabled or original is None:
        yield False
        return
    # Only the gather decision reads this name; the tile kernels keep their own device check.
    trl_utils._use_triton = lambda device: True
    try:
        yield True
    finally:
        trl_utils._use_triton = original
