"""Hugging Face transformers backend: batched decoding of a loaded transformers model.

Two decode paths behind one `generate`:
- Llama-family models (Llama, Mistral without sliding window, Qwen2) on a CPU run on `LlamaEngine`
  (generate/llama_engine.py, scheduled by generate/engine_loop.py): a lean forward with a slot KV
  cache, no padding, shared-prefix reuse, and a greedy head screened in bf16 without changing the
  argmax. `engine="transformers"` forces the path below; `engine="fast"` refuses other models and
  also runs on an accelerator (not yet measured there, so `auto` does not pick it).
- Any other model runs the manual loop below through transformers' own forward.

The transformers loop: continuous batching.

Why not `model.generate`: on a CPU, a batched `generate` keeps decoding rows that have already
finished until the longest row of the batch ends, and its DynamicCache copies the whole KV cache
every step (torch.cat: 56% of a batch-32 SmolLM2 decode step, measured with torch.profiler).
This loop instead
1. sorts rows (prompt x sample) by prompt length, longest first, so a prefill pads little;
2. keeps the KV cache in preallocated buffers written in place (`_KV`);
3. when a quarter of the batch has finished, rebuilds the cache once: finished rows are dropped,
   new prompts are prefilled and merged in, left-padded to a common width (a 4D attention mask
   hides padding and unwritten columns), and columns that are padding for every row are cut.
Greedy output equals `model.generate`'s (tests/test_generate.py checks it token for token).

Sampling is reproducible per row: each row owns a `torch.Generator` seeded from its item seed and
sample index, and draws the token by the Gumbel-max trick (argmax of logits/T + Gumbel noise is an
exact sample of softmax(logits/T)). A row's draws therefore do not depend on which other rows share
its batch, on batch size, or on resume. Limit: logits themselves can differ in the last bits with
the amount of padding (different matmul shapes), which can flip a near-tie; so bit-identical
samples are guaranteed for the same batch layout, and near-identical otherwise.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

from mathtune.generate.base import Generation, OnDone, sample_seed, truncate_at_stop


@dataclass
class _Row:
    prompt_idx: int
    sample_idx: int
    ids: list[int]
    seed: int
    generator: Any = None
    out: list[int] = field(default_factory=list)
    seconds: float = 0.0
    finish: str | None = None
    stop_hit: bool = False


def _cache_kwarg(model: Any) -> str:
    # transformers 5.x renamed `past_key_values` to `cache`; accept both so the loop survives
    # either side of the rename.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class HFBackend:
    name = "hf"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 32,
        refill: bool = True,
        autocast_bf16: bool = False,
        engine: str = "auto",
        workers: int | None = None,
    ):
        self.model = model
        self.tok = tokenizer
        self.batch_size = batch_size
        self.refill = refill
        self.autocast_bf16 = autocast_bf16
        self._cache_kw = _cache_kwarg(model)
        eos = getattr(model.generation_config, "eos_token_id", None) if hasattr(model, "generation_config") else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
        self.device = next(model.parameters()).device
        if engine not in ("auto", "fast", "transformers"):
            raise ValueError(f"engine {engine!r}: choose auto, fast or transformers")
        self.engine = engine
        if workers is not None and workers < 1:
            raise ValueError(f"workers {workers}: must be at least 1 (or None: chosen per call)")
        self.workers = workers  # the fast engine's decoding loops (engine_loop.cpu_workers when None)
        self._engine = None

    def fast_engine(self):
        """The lean Llama-family engine for this model, or None when it does not apply (the
        transformers loop then runs). Built once per backend: it holds fused copies of weights."""
        if self.engine == "transformers":
            return None
        if self._engine is None:
            from mathtune.generate.llama_engine import LlamaEngine, supports

            reason = supports(self.model)
            if reason is None and self.engine == "auto" and self.device.type != "cpu":
                # Measured only on CPU so far; on an accelerator `auto` keeps the tested
                # transformers loop (or use the vllm backend); engine="fast" opts in.
                reason = f"auto uses the fast engine on CPU only (device {self.device.type})"
            if reason is not None:
                if self.engine == "fast":
                    raise ValueError(f"engine 'fast': {reason}")
                self.engine = "transformers"
                return None
            import torch

            self._engine = LlamaEngine(self.model, dtype=torch.bfloat16 if self.autocast_bf16 else None)
        return self._engine

    # ---- public -------------------------------------------------------------------------------

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
        import torch

        stop = [s for s in (stop or []) if s]
        seeds = seeds if seeds is not None else [0] * len(prompts)
        encoded = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        rows = []
        for i, ids in enumerate(encoded):
            for j in range(n):
                row = _Row(i, j, ids, sample_seed(seeds[i], j))
                if temperature > 0:
                    row.generator = torch.Generator(device=self.device).manual_seed(row.seed)
                rows.append(row)
        # Longest first: the first prefill sets the cache width, later (shorter) refills pad into it.
        pending = sorted(rows, key=lambda r: (-len(r.ids), r.prompt_idx, r.sample_idx))
        results: list[list[Generation | None]] = [[None] * n for _ in prompts]
        remaining = [n] * len(prompts)

        def finish(row: _Row) -> None:
            results[row.prompt_idx][row.sample_idx] = self._to_generation(row, stop)
            remaining[row.prompt_idx] -= 1
            if remaining[row.prompt_idx] == 0 and on_done is not None:
                on_done(row.prompt_idx, results[row.prompt_idx])  # type: ignore[arg-type]

        if not pending:
            return results  # type: ignore[return-value]
        engine = self.fast_engine()
        if engine is not None:
            from mathtune.generate.engine_loop import cpu_workers, run_engine

            workers = self.workers or cpu_workers(engine, len(pending), torch.get_num_threads())
            with torch.inference_mode():
                run_engine(
                    self,
                    engine,
                    pending,
                    finish,
                    temperature=temperature,
                    top_p=top_p,
                    max_new_tokens=max_new_tokens,
                    stop=stop,
                    workers=workers,
                )
            return results  # type: ignore[return-value]
        # bf16 autocast is opt-in: measured on SmolLM2 it changes the greedy text of about half the
        # items (17 of 32 within 64 tokens), so fp32 stays the default for comparable answers.
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast_bf16 else _null()
        with torch.inference_mode(), ctx:
            self._loop(pending, finish, temperature, top_p, max_new_tokens, stop)
        return results  # type: ignore[return-value]

    # ---- the decode loop ----------------------------------------------------------------------

    def _loop(self, pending, finish, temperature, top_p, max_new_tokens, stop) -> None:
        import torch

        tail = self._stop_tail(stop)
        rows: list[_Row] = []  # rows in the batch, finished ones included until the next rebuild
        kv: _KV | None = None
        pos = logits = None
        quarter = max(1, self.batch_size // 4)
        while pending or rows:
            live = [k for k, r in enumerate(rows) if r.finish is None]
            dead = len(rows) - len(live)
            free = self.batch_size - len(live)
            refill = bool(pending) and (not live or (self.refill and free >= quarter))
            # Rebuild (compact out finished rows, merge new prompts in) when a quarter of the batch
            # is free: a rebuild copies the cache once, so it is amortised over several finishes.
            if refill or (dead and (not live or dead >= max(quarter, len(rows) // 4))):
                take: list[_Row] = []
                new = None
                if refill:
                    take, pending = pending[:free], pending[free:]
                    t0 = time.perf_counter()
                    new = self._prefill(take)
                    dt = time.perf_counter() - t0
                    for r in take:
                        r.seconds += dt / len(take)
                idx = torch.tensor(live, dtype=torch.long, device=self.device)
                kv = _KV.rebuild(kv, idx, new, reserve=max_new_tokens + 1)
                old_pos = pos[idx] if pos is not None and live else None
                old_logits = logits[idx] if logits is not None and live else None
                if new is not None:
                    pos = torch.cat([old_pos, new[2]]) if old_pos is not None else new[2]
                    logits = torch.cat([old_logits, new[3]]) if old_logits is not None else new[3]
                else:
                    pos, logits = old_pos, old_logits
                rows = [rows[k] for k in live] + take
                if not rows:
                    kv = None
                    continue
            t0 = time.perf_counter()
            next_tok = self._choose(logits, rows, temperature, top_p)
            done = []
            for row, t in zip(rows, next_tok.tolist(), strict=True):
                if row.finish is not None:
                    continue  # finished earlier, waiting for the next rebuild
                if self._append(row, t, stop, tail, max_new_tokens):
                    done.append(row)
            running = [r for r in rows if r.finish is None]
            if running:
                if kv.n >= kv.cap:
                    kv = _KV.rebuild(kv, torch.arange(len(rows), device=self.device), None, reserve=max_new_tokens + 1)
                kv.valid[:, kv.n] = True
                out = self.model(
                    input_ids=next_tok[:, None],
                    attention_mask=kv.additive_mask(),
                    position_ids=pos[:, None],
                    use_cache=True,
                    **{self._cache_kw: kv.as_cache(self.model.config)},
                )
                kv.n += 1
                logits = out.logits[:, -1, :].float()
                pos = pos + 1
            dt = time.perf_counter() - t0
            share = dt / max(1, len(running) + len(done))
            for r in running:
                r.seconds += share
            for r in done:
                r.seconds += share
                finish(r)
            if not running:
                rows, kv, pos, logits = [], None, None, None

    def _prefill(self, rows: list[_Row]):
        import torch
        from transformers import DynamicCache

        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, width - len(r.ids) :] = torch.tensor(r.ids, dtype=torch.long)
            mask[k, width - len(r.ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: cache},
        )
        return cache, mask, pos[:, -1] + 1, out.logits[:, -1, :].float()

    def _choose(self, logits, rows: list[_Row], temperature: float, top_p: float):
        import torch

        if temperature <= 0:
            return logits.argmax(-1)
        scaled = logits / temperature
        if top_p < 1.0:
            sorted_logits, order = scaled.sort(-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            # Keep the smallest prefix whose mass reaches top_p (the top token is always kept).
            drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            scaled = scaled.masked_fill(drop, float("-inf"))
        u = torch.stack([torch.rand(scaled.shape[-1], generator=r.generator, device=scaled.device) for r in rows])
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-20, max=1.0 - 1e-7)))
        return (scaled + gumbel).argmax(-1)

    def _stop_tail(self, stop: list[str]) -> int:
        """How many trailing tokens `_hit_stop` must decode to see any stop string (plus slack for
        tokens that merge across the boundary)."""
        return max((len(self.tok(s, add_special_tokens=False)["input_ids"]) for s in stop), default=0) + 3

    def _append(self, row: _Row, t: int, stop: list[str], tail: int, max_out: int) -> bool:
        """Add token `t` to `row` and decide whether it ended the row (EOS, a stop string, or
        `max_out` tokens); returns True when it did. Shared by both decode paths."""
        row.out.append(t)
        if t in self.eos_ids:
            row.finish = "stop"
        elif stop and self._hit_stop(row.out[-tail:], stop):
            row.finish, row.stop_hit = "stop", True
        elif len(row.out) >= max_out:
            row.finish = "length"
        return row.finish is not None

    def _hit_stop(self, tail_ids: list[int], stop: list[str]) -> bool:
        text = self.tok.decode(tail_ids, skip_special_tokens=False)
        return any(s in text for s in stop)

    def _to_generation(self, row: _Row, stop: list[str]) -> Generation:
        ids = row.out[:-1] if row.out and row.out[-1] in self.eos_ids else row.out
        text = self.tok.decode(ids, skip_special_tokens=False)
        text, _ = truncate_at_stop(text, stop)
        return Generation(text=text, tokens=len(row.out), finish_reason=row.finish or "length", seconds=row.seconds)


class _KV:
    """The batch's key/value cache in preallocated buffers [B, heads, cap, head_dim] per layer.

    transformers' DynamicCache concatenates every step (a full copy of the cache per token: 56% of a
    batch-32 decode step of SmolLM2 on CPU, measured with torch.profiler); here a step writes one
    column in place. Rows are left-padded so that every row writes its next token at column `n`;
    `valid` marks the columns a row may attend to (not padding, not unwritten).
    """

    def __init__(self, keys, values, valid, n: int):
        self.keys, self.values, self.valid, self.n = keys, values, valid, n

    @property
    def cap(self) -> int:
        return self.valid.shape[1]

    @classmethod
    def rebuild(cls, old: _KV | None, live, new, *, reserve: int) -> _KV:
        """A fresh cache holding `old`'s rows `live` then the prefilled rows `new`, right-aligned
        at a common width, with `reserve` free columns (a row needs at most max_new_tokens)."""
        import torch

        span = 0
        if old is not None and len(live):
            # Columns left of every live row's first valid column are padding for all: dropped.
            first = int(old.valid[live, : old.n].long().argmax(1).min()) if old.n else 0
            span = old.n - first
        width = new[1].shape[1] if new is not None else 0
        n = max(span, width)
        n_old = len(live) if old is not None else 0
        n_new = new[1].shape[0] if new is not None else 0
        src = old.keys[0] if old is not None else new[0].layers[0].keys
        b, h, d = n_old + n_new, src.shape[1], src.shape[3]
        layers = len(old.keys) if old is not None else len(new[0].layers)
        keys = [src.new_zeros((b, h, n + reserve, d)) for _ in range(layers)]
        values = [src.new_zeros((b, h, n + reserve, d)) for _ in range(layers)]
        valid = torch.zeros((b, n + reserve), dtype=torch.bool, device=src.device)
        if n_old:
            for i in range(layers):
                keys[i][:n_old, :, n - span : n] = old.keys[i][live, :, old.n - span : old.n]
                values[i][:n_old, :, n - span : n] = old.values[i][live, :, old.n - span : old.n]
            valid[:n_old, n - span : n] = old.valid[live, old.n - span : old.n]
        if n_new:
            cache, mask = new[0], new[1]
            for i, layer in enumerate(cache.layers):
                keys[i][n_old:, :, n - width : n] = layer.keys
                values[i][n_old:, :, n - width : n] = layer.values
            valid[n_old:, n - width : n] = mask.bool()
        return cls(keys, values, valid, n)

    def additive_mask(self):
        """A 4D mask for the next token, additive (0 / dtype-min) so eager and sdpa attention both take it."""
        import torch

        dtype = self.keys[0].dtype
        v = self.valid[:, None, None, : self.n + 1]
        return torch.zeros(v.shape, dtype=dtype, device=v.device).masked_fill_(~v, torch.finfo(dtype).min)

    def as_cache(self, config):
        return _BufferCache(config, self)


def _buffer_cache_class():
    from transformers import DynamicCache

    class BufferCache(DynamicCache):
        """What the model sees: `update` writes the new column into the buffers and returns the
        filled part (a view, no copy)."""

        def __init__(self, config, kv: _KV):
            super().__init__(config=config)
            self.kv = kv

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            kv, q = self.kv, key_states.shape[2]
            kv.keys[layer_idx][:, :, kv.n : kv.n + q] = key_states
            kv.values[layer_idx][:, :, kv.n : kv.n + q] = value_states
            return kv.keys[layer_idx][:, :, : kv.n + q], kv.values[layer_idx][:, :, : kv.n + q]

        def get_seq_length(self, layer_idx: int = 0) -> int:
            return self.kv.n

    return BufferCache


def _BufferCache(config, kv: _KV):  # noqa: N802 - a class factory (transformers is imported lazily)
    global _BUFFER_CACHE
    if _BUFFER_CACHE is None:
        _BUFFER_CACHE = _buffer_cache_class()
    return _BUFFER_CACHE(config, kv)


_BUFFER_CACHE = None


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
