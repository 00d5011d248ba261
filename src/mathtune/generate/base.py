"""The generation interface every backend implements, and helpers shared by backends."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from mathtune.errors import UserError

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Generation:
    text: str  # the completion, cut before the first stop sequence (the stop itself is not kept)
    tokens: int  # new tokens the model generated, including the one(s) that completed a stop
    finish_reason: FinishReason  # "stop": EOS or a stop sequence; "length": hit max_new_tokens
    seconds: float = 0.0  # this generation's share of the wall time of the batches it was in


# Called with (prompt index, its generations) as soon as one prompt's samples are all finished.
OnDone = Callable[[int, list[Generation]], None]


class Backend(Protocol):
    name: str

    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        stop: list[str],
        seeds: list[int],
        on_done: OnDone | None = None,
    ) -> list[list[Generation]]:
        """`n` generations for each prompt, in prompt order. `seeds[i]` seeds prompt i's samples
        (ignored when temperature is 0). `on_done(i, gens)` is called as soon as prompt i's samples
        are all finished, so the caller can persist results while the rest is still generating."""
        ...


def truncate_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop sequence; returns (text, whether a stop was found)."""
    cut = -1
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if i != -1 and (cut == -1 or i < cut):
            cut = i
    return (text, False) if cut == -1 else (text[:cut], True)


def derive_seed(seed: int, item_id: str) -> int:
    """A per-item seed from the run seed and the item id: independent of batch composition and of
    which items a resumed run still has to do."""
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_seed(item_seed: int, sample_idx: int) -> int:
    """The seed of sample j of an item: mixed, so item A's sample 1 never equals item B's sample 0."""
    return (item_seed + sample_idx * 0x9E3779B97F4A7C15) % (1 << 63)


def make_backend(name: str, *, model: Any = None, tokenizer: Any = None, **kw: Any) -> Backend:
    """Build a backend by name: 'hf' wraps a loaded (model, tokenizer); 'vllm' loads its own engine."""
    if name == "hf":
        from mathtune.generate.hf import HFBackend

        return HFBackend(model, tokenizer, **kw)
    if name == "vllm":
        from mathtune.generate.vllm import VLLMBackend

        return VLLMBackend(**kw)
    raise UserError(f"backend '{name}': unknown (choose hf or vllm)")
