"""vLLM backend (GPU users; `pip install mathtune[vllm]`).

vLLM is imported only when this backend is built, and its absence is a one-line UserError.
A LoRA adapter is served on top of the base weights through `LoRARequest` (no merge), so base
and tuned evaluations share one engine build and the exact base weights.
"""

from __future__ import annotations

import time
from typing import Any

from mathtune.errors import UserError
from mathtune.generate.base import Generation, OnDone, truncate_at_stop


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise UserError(
            "backend 'vllm': vllm is not installed (pip install 'mathtune[vllm]', needs a CUDA GPU); use --backend hf"
        ) from None
    return vllm


_DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        *,
        model_path: str,
        adapter: str | None = None,
        dtype: str = "auto",
        seed: int = 42,
        max_lora_rank: int = 64,
        chunk: int = 256,
        **engine_kw: Any,
    ):
        vllm = _import_vllm()
        self._vllm = vllm
        self.chunk = chunk
        self.llm = vllm.LLM(
            model=model_path,
            dtype=_DTYPES.get(dtype, dtype),
            seed=seed,
            enable_lora=adapter is not None,
            max_lora_rank=max_lora_rank,
            **engine_kw,
        )
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, str(adapter))

    def generate(
        self,
        prompts: list[str],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        stop: list[str] | None = None,
        seeds: list[int] | None = None,
        on_done: OnDone | None = None,
    ) -> list[list[Generation]]:
        stop = [s for s in (stop or []) if s]
        seeds = seeds if seeds is not None else [0] * len(prompts)
        results: list[list[Generation]] = []
        # Chunks bound what a kill can lose; within a chunk vLLM schedules continuously.
        for start in range(0, len(prompts), self.chunk):
            part = prompts[start : start + self.chunk]
            params = [
                self._vllm.SamplingParams(
                    n=n,
                    temperature=temperature,
                    top_p=top_p,
                    max_tokens=max_new_tokens,
                    stop=stop,
                    # A per-request seed makes sampling independent of batching and resume.
                    seed=seeds[start + k] if temperature > 0 else None,
                )
                for k in range(len(part))
            ]
            t0 = time.perf_counter()
            outs = self.llm.generate(part, params, lora_request=self.lora, use_tqdm=False)
            per = (time.perf_counter() - t0) / max(1, len(part) * n)
            for k, o in enumerate(outs):
                gens = []
                for c in o.outputs:
                    text, _ = truncate_at_stop(c.text, stop)
                    reason = "length" if c.finish_reason == "length" else "stop"
                    gens.append(Generation(text, len(c.token_ids), reason, per))
                results.append(gens)
                if on_done is not None:
                    on_done(start + k, gens)
        return results
