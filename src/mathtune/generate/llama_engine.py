"""A lean forward pass for Llama-family decoders (Llama, Mistral, Qwen2), built for batched decoding.

transformers' forward is written for generality: per step it runs q/k/v and gate/up as separate
matmuls, and its sdpa path copies the whole KV cache `num_heads / num_kv_heads` times (repeat_kv)
before attending. On 2 CPU cores, a SmolLM2-135M decode step at batch 64 spent 71% in matmuls that
reached about half of what the same matmul shapes reach in isolation, and 13% in attention.

This engine computes the same function with fewer, larger operations:
- q/k/v and gate/up are fused into one matmul each (weights concatenated once);
- all tokens of a step, decode tokens of running rows and prompt tokens of newly admitted rows,
  go through the matmuls as one flat [tokens, hidden] batch: no padding is ever computed;
- the KV cache is a fixed block of slots [slots, kv_heads, length, head_dim] written in place;
  grouped-query attention reads it through a view (query heads grouped per KV head), no copy;
- on a CPU in fp32 or bf16, matmuls go through oneDNN with weights reordered once, and where the C kernels
  build (generate/cpu_kernels.py) attention reads each token's own cache length and the small ops
  (rotary + cache writes, RMSNorm, SiLU * up) take one pass each; elsewhere torch ops do the same.

Numerics are those of the transformers model in the same dtype (same norms, rotary tables, softmax
in fp32); only summation orders (and, in the kernels, an exp within about 1 ulp) differ, which
moves logits in the last bits. In bf16 the engine stores the cache and the matmul inputs in bf16
but keeps the residual stream and the kernels' arithmetic in fp32. tests/test_llama_engine.py holds
every path to transformers' own error against an fp64 forward: in fp32 row by row, in bf16 on
average (bf16 rounding on random weights is chaotic row by row, in transformers too).
LoRA adapters (PEFT) are folded into the weights at construction; the model itself is not changed.
`supports(model)` says why a model cannot use this engine; callers then fall back to transformers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from mathtune.generate import cpu_kernels

_MODEL_TYPES = {"llama", "mistral", "qwen2"}
_ROPE_TYPES = {None, "default", "linear", "llama3"}  # position-only tables (no dynamic rescaling)


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model: Any) -> str | None:
    """None when `model` can run on this engine, else the reason it cannot (for logs and tests)."""
    base = _base(model)
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in _MODEL_TYPES:
        return f"model type {getattr(cfg, 'model_type', None)!r} is not one of {sorted(_MODEL_TYPES)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type")) not in _ROPE_TYPES:
        return f"rope type {rope.get('rope_type')!r}"
    if getattr(cfg, "use_sliding_window", False) or (
        cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None)
    ):
        return "sliding-window attention"
    if getattr(cfg, "mlp_bias", False):
        return "MLP bias"
    inner = getattr(base, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "unexpected module layout"
    for name, mod in base.named_modules():
        dora = getattr(mod, "use_dora", None) or {}
        if hasattr(mod, "lora_A") and any(dora.get(a) for a in _active_adapters(mod)):
            return f"DoRA adapter on {name}"
    return None


def _active_adapters(mod: Any) -> list[str]:
    act = getattr(mod, "active_adapters", None) or ["default"]
    return act if isinstance(act, list) else [act]


def _weight(linear: Any):
    """The effective weight (and bias) of a Linear, with active, unmerged LoRA deltas folded in."""
    if hasattr(linear, "base_layer") and hasattr(linear, "lora_A"):
        w = linear.base_layer.weight.detach()
        bias = linear.base_layer.bias
        if not getattr(linear, "merged", False) and not getattr(linear, "disable_adapters", False):
            for a in _active_adapters(linear):
                if a in linear.lora_A:
                    w = w + linear.get_delta_weight(a).to(w.dtype)
        return w, (bias.detach() if bias is not None else None)
    return linear.weight.detach(), (linear.bias.detach() if linear.bias is not None else None)


@dataclass
class _Layer:
    ln1: Any
    ln2: Any
    wqkv: Any
    bqkv: Any
    wo: Any
    wgu: Any
    wd: Any


@dataclass
class _Step:
    """Per-step inputs every layer's attention uses; the torch path's extras are filled by
    `LlamaEngine._prepare_torch_step`."""

    slot: Any  # [T] cache slot of each token
    pos: Any  # [T] position of each token
    n_dec: int
    dec_pos: Any
    width: int = 0
    mask: Any = None
    groups: list = field(default_factory=list)
    cos: Any = None
    sin: Any = None


@dataclass
class Prefill:
    """A prompt (or the part of it after `start` cached tokens) to run into cache slot `slot`."""

    slot: int
    ids: list[int]
    start: int = 0


def _onednn_pack(w):
    """`w` reordered once into oneDNN's blocked layout, for `_linear`."""
    import torch

    return torch.ops.mkldnn._reorder_linear_weight(w)


class LlamaEngine:
    """The engine for one model. `onednn` and `kernels` allow those CPU paths where they work (the
    tests turn them off to check the torch paths); `dtype` defaults to the model's."""

    def __init__(self, model: Any, *, dtype: Any = None, onednn: bool = True, kernels: bool = True):
        import torch

        reason = supports(model)
        if reason is not None:
            raise ValueError(f"model not supported by the fast engine: {reason}")
        base = _base(model)
        cfg = base.config
        inner = base.model
        self.device = next(base.parameters()).device
        src_dtype = next(base.parameters()).dtype
        self.dtype = dtype or src_dtype  # matmul/cache dtype; norms and softmax run in fp32
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.group = self.n_heads // self.n_kv
        self.scale = self.head_dim**-0.5
        self.eps = cfg.rms_norm_eps
        self.inter = cfg.intermediate_size
        self.max_positions = cfg.max_position_embeddings
        # oneDNN matmuls and the C kernels: for fp32 and bf16 on a CPU, where they work there
        cpu_path = self.dtype in (torch.float32, torch.bfloat16) and self.device.type == "cpu"

        def cast(t):
            return None if t is None else t.to(self.dtype).contiguous()

        with torch.no_grad():
            self.embed = inner.embed_tokens.weight.detach()
            self.layers = []
            for layer in inner.layers:
                att, mlp = layer.self_attn, layer.mlp
                (wq, bq), (wk, bk), (wv, bv) = _weight(att.q_proj), _weight(att.k_proj), _weight(att.v_proj)
                has_bias = bq is not None
                self.layers.append(
                    _Layer(
                        ln1=layer.input_layernorm.weight.detach().float(),  # norms compute in fp32
                        ln2=layer.post_attention_layernorm.weight.detach().float(),
                        wqkv=cast(torch.cat([wq, wk, wv])),
                        bqkv=cast(torch.cat([bq, bk, bv])) if has_bias else None,
                        wo=cast(_weight(att.o_proj)[0]),
                        wgu=cast(torch.cat([_weight(mlp.gate_proj)[0], _weight(mlp.up_proj)[0]])),
                        wd=cast(_weight(mlp.down_proj)[0]),
                    )
                )
            self.norm = inner.norm.weight.detach().float()
            self.lm_head = cast(_weight(base.lm_head)[0])
            # Matmuls through oneDNN with each weight reordered once into its blocked layout: in
            # fp32 200-220 GFLOP/s at decode shapes on this project's 2-core CPU, against 165-190
            # for torch's default path (MKL) on plain weights; in bf16 about 420 (bench/RESULTS.md).
            self.onednn = onednn and cpu_path and _onednn_ok(self.dtype)
            if self.onednn:
                for layer in self.layers:
                    layer.wqkv, layer.wo, layer.wgu, layer.wd = map(
                        _onednn_pack, (layer.wqkv, layer.wo, layer.wgu, layer.wd)
                    )
            # Greedy screening (see `greedy`): only where fp32 matmuls are the slow part.
            self.screen = self.dtype == torch.float32 and self.device.type == "cpu"
            self.screen_k = 8
            self.screen_wide = 128  # the second look, for the rows the first leaves unsure
            self.prepare_head()
        # The C kernels where they build (generate/cpu_kernels.py). Their attention wants values
        # stored like keys, [L, head_dim] per head; torch's bmm path is faster with them transposed.
        self.kernel = kernels and cpu_path and cpu_kernels.available(self.group, self.head_dim)
        self._rotary = inner.rotary_emb
        self._cos = self._sin = self._sin_signed = None
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self._shared: list[tuple[Any, Any]] | None = None

    # ---- cache ----------------------------------------------------------------------------------

    def replica(self) -> LlamaEngine:
        """An engine over the same weights (shared, never written) with a cache of its own: one per
        decoding loop when several run side by side (engine_loop.run_engine)."""
        twin = copy.copy(self)
        twin.keys, twin.values, twin._shared = [], [], None
        return twin

    def allocate(self, slots: int, length: int) -> None:
        """(Re)allocate the KV cache: `slots` rows of `length` positions each."""
        import torch

        length = min(length, self.max_positions)
        shape = (slots, self.n_kv, length, self.head_dim)
        shape_v = shape if self.kernel else (slots, self.n_kv, self.head_dim, length)  # see `_attend_torch`
        # The torch path needs zeros, not garbage: masked columns still meet V in probs @ V, and
        # 0 * NaN is NaN. The kernels read only written positions; untouched pages then cost nothing.
        new = torch.empty if self.kernel else torch.zeros
        self.keys = [new(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.values = [new(shape_v, dtype=self.dtype, device=self.device) for _ in self.layers]
        self._shared = None
        self._tables(length)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def kv_bytes_per_position(self) -> int:
        import torch

        return 2 * len(self.layers) * self.n_kv * self.head_dim * torch.empty((), dtype=self.dtype).element_size()

    def _rows(self, vc):
        """A layer's value cache as [slots, kv, L, head_dim], whichever way it is stored."""
        return vc if self.kernel else vc.transpose(-1, -2)

    def copy_slot(self, src: int, dst: int, n: int) -> None:
        """Copy the first `n` cached positions of slot `src` to slot `dst`."""
        for k, v in zip(self.keys, map(self._rows, self.values), strict=True):
            k[dst, :, :n] = k[src, :, :n]
            v[dst, :, :n] = v[src, :, :n]

    def save_prefix(self, slot: int, n: int) -> list[tuple[Any, Any]]:
        return [
            (k[slot, :, :n].clone(), v[slot, :, :n].clone())
            for k, v in zip(self.keys, map(self._rows, self.values), strict=True)
        ]

    def share_prefix(self, saved: list[tuple[Any, Any]] | None) -> None:
        """Declare that positions 0..P-1 of every slot hold `saved` (from `save_prefix`, P its
        length) until the next `allocate`: the C attention then reads those positions from this one
        copy, which stays in cache, instead of once per row (a chat prompt's 24-token system turn is
        about an eighth of a GSM8K row's cache; an 8-shot prompt's ~800 tokens most of it). Slots
        must still get the prefix with `load_prefix` (the torch path reads it there). None: stop."""
        self._shared = saved

    def load_prefix(self, saved: list[tuple[Any, Any]], slot: int) -> None:
        for (pk, pv), k, v in zip(saved, self.keys, map(self._rows, self.values), strict=True):
            n = pk.shape[1]
            k[slot, :, :n] = pk
            v[slot, :, :n] = pv

    def _tables(self, length: int) -> None:
        import torch

        if self._cos is not None and self._cos.shape[0] >= length:
            return
        pos = torch.arange(length, device=self.device)[None]
        probe = torch.empty(1, dtype=torch.float32, device=self.device)
        cos, sin = self._rotary(probe, pos)  # transformers' own tables (rope scaling included)
        self._cos, sin = cos[0].float().contiguous(), sin[0].float().contiguous()
        self._sin = sin
        half = sin.shape[-1] // 2
        self._sin_signed = sin.clone()
        self._sin_signed[:, :half] = -sin[:, :half]

    # ---- forward --------------------------------------------------------------------------------

    def forward(self, dec_tokens, dec_pos, prefills: list[Prefill]):
        """One step. Decode: slot i < len(dec_tokens) feeds `dec_tokens[i]` at position `dec_pos[i]`
        and attends to its positions 0..dec_pos[i]. Idle slots in that range feed anything at the
        scratch position (the last one, which no row ever reaches); their output is meaningless.
        Prefill: each entry's tokens go to its slot at positions start, start+1, ...; positions
        before `start` must already be in that slot's cache.
        Returns the final normalised hidden states of the decode rows and of the last token of each
        prefill, in that order; `logits` or `greedy` turn them into tokens."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        n_dec = 0 if dec_tokens is None else dec_tokens.shape[0]
        ids, pos = [], []
        if n_dec:
            ids.append(dec_tokens)
            pos.append(dec_pos)
        spans = []
        at = n_dec
        for p in prefills:
            ids.append(torch.tensor(p.ids, dtype=torch.long, device=self.device))
            pos.append(torch.arange(p.start, p.start + len(p.ids), device=self.device))
            spans.append((at, at + len(p.ids)))
            at += len(p.ids)
        ids_t, pos_t = torch.cat(ids), torch.cat(pos)
        if int(pos_t.max()) >= self.length:
            raise ValueError(f"position {int(pos_t.max())} beyond the cache length {self.length}")
        # Where each token's key/value goes: one scatter per layer for decode and prompt tokens.
        slot_t = torch.cat(
            [torch.arange(n_dec, device=self.device)]
            + [torch.full((len(p.ids),), p.slot, dtype=torch.long, device=self.device) for p in prefills]
        )
        step = _Step(slot_t, pos_t, n_dec, dec_pos)
        if not self.kernel:
            self._prepare_torch_step(step, prefills, spans)
        keep = None  # the tokens whose hidden state is returned, when that is not all of them
        if spans:
            last = torch.tensor([b - 1 for _, b in spans], dtype=torch.long, device=self.device)
            keep = torch.cat([torch.arange(n_dec, device=self.device), last])
        # bf16 with the kernels: a matmul's output is added to the fp32 residual stream by the kernel
        # of the norm after it (one pass instead of two; the same roundings as x.add_(y))
        fused = self.kernel and self.dtype == torch.bfloat16
        resid = None  # the last down projection, not yet added to x (fused)
        x = F.embedding(ids_t, self.embed).float()
        for li, layer in enumerate(self.layers):
            kc, vc = self.keys[li], self.values[li]
            qkv = _linear(self._norm(x, layer.ln1, resid), layer.wqkv, layer.bqkv)
            if self.kernel:
                # The last layer's output is needed only for `keep`: the other prompt tokens stop
                # once their keys and values are cached (a sixth of a step's tokens skip 84% of a
                # layer's matmuls).
                trim = keep if li == len(self.layers) - 1 else None
                out = self._attend_kernel(qkv, kc, vc, step, self._shared[li] if self._shared else None, trim)
                if trim is not None:
                    x, keep = x[trim], None
            else:
                out = self._attend_torch(qkv, kc, vc, step)
            if fused:
                h = self._norm(x, layer.ln2, _linear(out.view(x.shape[0], -1), layer.wo))
            else:
                x = self._project_add(x, out.view(x.shape[0], -1), layer.wo)
                h = self._norm(x, layer.ln2)
            gu = _linear(h, layer.wgu)
            if self.kernel:
                act = cpu_kernels.silu_mul(gu, self.inter)
            else:
                act = F.silu(gu[:, : self.inter]) * gu[:, self.inter :]
            if fused:
                resid = _linear(act, layer.wd)
            else:
                x = self._project_add(x, act, layer.wd)
        if keep is not None:
            x = x[keep]
        return self._norm(x, self.norm, resid)

    def _attend_kernel(self, qkv, kc, vc, step: _Step, shared, rows=None):
        """Rotary and cache writes of every token of the step, then attention of every token or of
        `rows` (indices) only, in C; `shared`: this layer's part of the `share_prefix` copy, or None."""
        nq, hd = self.n_heads, self.head_dim
        cpu_kernels.rope_store(
            qkv, n_heads=nq, n_kv=self.n_kv, head_dim=hd, cos=self._cos, sin=self._sin,
            slot=step.slot, pos=step.pos, kc=kc, vc=vc,
        )  # fmt: skip
        q, slot, pos = qkv[:, : nq * hd].view(-1, nq, hd), step.slot, step.pos
        if rows is not None:
            q, slot, pos = q[rows], slot[rows], pos[rows]
        # idle decode slots sit at the scratch position, the last one: the kernel skips them
        return cpu_kernels.attention(q, kc, vc, slot, pos, idle_pos=self.length - 1, scale=self.scale, shared=shared)

    def _prepare_torch_step(self, step: _Step, prefills: list[Prefill], spans) -> None:
        """What `_attend_torch` shares across layers: rotary rows, the decode mask, prompt groups."""
        import torch

        step.groups = self._prefill_groups(prefills, spans)
        step.cos = self._cos[step.pos][:, None]  # [T, 1, D]
        step.sin = self._sin_signed[step.pos][:, None]
        if step.n_dec:
            # Decode attention reads the first `width` positions: up to the last live row's own
            # (idle slots, at the scratch position, read anything below it; their output is unused).
            live = step.dec_pos[step.dec_pos < self.length - 1]
            step.width = int(live.max()) + 1 if len(live) else 1
            cols = torch.arange(step.width, device=self.device)
            allowed = cols[None] <= step.dec_pos[:, None].clamp(max=step.width - 1)
            # One additive mask per step, shaped like the attention scores [rows * kv, group, width].
            mask = torch.zeros((step.n_dec, self.n_heads, step.width), dtype=torch.float32, device=self.device)
            mask.masked_fill_(~allowed[:, None], float("-inf"))
            step.mask = mask.view(step.n_dec * self.n_kv, self.group, step.width)

    def _attend_torch(self, qkv, kc, vc, step: _Step):
        """`_attend_kernel` in torch ops, for other dtypes and devices, or where the kernels don't build."""
        import torch

        nq, nkv, hd, g = self.n_heads, self.n_kv, self.head_dim, self.group
        h, n_dec, width = nq * hd, step.n_dec, step.width
        # Rotary on q and k at once; rotate_half(x) * sin == roll(x, D/2) * (sin with its first
        # half negated), exactly (a sign flip does not round).
        qk = qkv[:, : h + nkv * hd].view(-1, nq + nkv, hd).float()
        qk = torch.addcmul(qk * step.cos, qk.roll(hd // 2, dims=-1), step.sin).to(self.dtype)
        q, k = qk[:, :nq], qk[:, nq:]
        v = qkv[:, h + nkv * hd :].view(-1, nkv, hd)
        kc[step.slot, :, step.pos] = k
        self._rows(vc)[step.slot, :, step.pos] = v
        out = torch.empty((qkv.shape[0], nq, hd), dtype=self.dtype, device=self.device)
        if n_dec:
            qd = q[:n_dec].reshape(n_dec * nkv, g, hd)
            keys = kc[:n_dec, :, :width].reshape(n_dec * nkv, width, hd)  # views: slots are contiguous
            vals_t = vc[:n_dec, :, :, :width].reshape(n_dec * nkv, hd, width)
            # K @ q^T reads the keys in rows (faster than q @ K^T here); the add transposes back.
            scores = torch.add(step.mask, torch.bmm(keys, qd.transpose(1, 2)).transpose(1, 2).float(), alpha=self.scale)
            probs = scores.softmax(-1).to(self.dtype)
            # V^T @ P^T: with values stored transposed, this reads them in rows (25% faster
            # than P @ V on a CPU, where this step is bound by reading the cache).
            out[:n_dec] = (
                torch.bmm(vals_t, probs.transpose(1, 2)).view(n_dec, nkv, hd, g).transpose(2, 3).reshape(n_dec, nq, hd)
            )
        for group in step.groups:
            if len(group) == 1:
                p, (a, b) = group[0]
                out[a:b] = self._prefill_attention(q[a:b], kc[p.slot], vc[p.slot], p.start)
            else:
                self._prefill_attention_batched(q, k, v, kc, vc, group, out)
        return out

    def _project_add(self, x, a, w):
        """x + a @ w.T, x being the fp32 residual stream; in fp32 one call (the residual add rides on
        the matmul)."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        if w.is_mkldnn:
            if a.dtype == torch.float32:
                if a.shape[0] == 1:  # see _one_row
                    return torch.ops.mkldnn._linear_pointwise.binary(_one_row(a), _one_row(x), w, None, "add")[:1]
                return torch.ops.mkldnn._linear_pointwise.binary(a, x, w, None, "add")
            return x.add_(_linear(a, w))  # x is this step's own tensor (from `forward`)
        if a.dtype == torch.float32:
            return torch.addmm(x, a, w.t())
        return x + F.linear(a, w).float()

    def prepare_head(self) -> None:
        """What `logits` and `greedy` use, derived from `lm_head` (call again after changing it):
        its packed copy, and for screening its bf16 copy and the norms of the bound."""
        import torch

        self._head = _onednn_pack(self.lm_head) if self.onednn else self.lm_head
        if not self.screen:
            return
        self._head_bf16 = self.lm_head.to(torch.bfloat16)
        # the screen's matmul through oneDNN where bf16 is native there (identical result, 5% faster)
        use = self.onednn and _onednn_ok(torch.bfloat16)
        self._screen_head = _onednn_pack(self._head_bf16) if use else self._head_bf16
        self._head_norms = self.lm_head.norm(dim=-1)
        self._head_max = self._head_norms.max()
        self._head_resid = (self.lm_head - self._head_bf16.float()).norm(dim=-1)
        self._head_resid_max = self._head_resid.max()

    def logits(self, h):
        return _linear(h, self._head).float()

    def greedy(self, h):
        """argmax of `logits(h)`, computed mostly in bf16 without changing the answer.

        The vocabulary projection is a fifth of a small model's FLOPs and, in fp32 on a CPU, about
        a third of its decode time. Here bf16 logits screen the vocabulary and only the tokens that
        could still be the fp32 argmax are recomputed in fp32. With h = h' + dh and w = w' + dw
        (h', w' rounded to bf16), h.w - h'.w' = dh.w + h'.dw + ... so by Cauchy-Schwarz a logit
        moves by at most |dh||w| + |h||dw| + |dh||dw| plus fp32 summation error (2 K 2^-24 |h||w|,
        K = hidden size), all from norms measured here, not assumed; the bf16 result is rounded
        once more (2^-8 |logit|). The candidates are the bf16 top k; when the k-th one's upper
        bound (with the largest |w_j| of the vocabulary) is below the first one's lower bound, no
        token outside them can be the argmax, and their fp32 logits decide. A row where that check
        fails (a flat distribution) gets full fp32 logits."""
        import torch

        if not self.screen:
            logits = _linear(h, self._head)
            if self.kernel and logits.dtype == torch.bfloat16:
                return cpu_kernels.argmax_bf16(logits)  # torch.argmax's result, 10x faster here
            return logits.float().argmax(-1)
        h_hi = h.to(torch.bfloat16)
        approx = _linear(h_hi, self._screen_head)  # summed in fp32, rounded to bf16 once more
        if self.kernel:  # any k largest will do for the bound below; C: 1.2 ms, torch.topk 5.8-8.5 (200 rows)
            vals, idx = cpu_kernels.topk_bf16(approx, self.screen_k)
        else:
            vals, idx = approx.topk(self.screen_k, dim=-1)
            vals = vals.float()
        u = 2.0**-8
        hn = h.norm(dim=-1) * 1.01
        lo = (h - h_hi.float()).norm(dim=-1)
        acc = 2 * h.shape[-1] * 2.0**-24  # fp32 summation, both sides

        def err(wn, dn, lo, hn):  # bound on |h.w - bf16(h).bf16(w)| from |w| and |w - bf16(w)|
            return lo * wn + hn * dn + lo * dn + acc * hn * wn

        def settle(h, vals, idx, best_low, lo, hn):
            """The fp32 argmax among the candidates `idx`, and the rows where a token outside
            them might beat it (the last candidate's upper bound reaches the best one's lower)."""
            rest_high = vals[:, -1] + u * vals[:, -1].abs() + err(self._head_max, self._head_resid_max, lo, hn)
            exact = (h[:, None, :] * self.lm_head[idx]).sum(-1)  # fp32 logits of the candidates
            return idx.gather(1, exact.argmax(-1, keepdim=True)).squeeze(1), (rest_high >= best_low).nonzero().flatten()

        i1 = idx[:, 0]
        best_low = vals[:, 0] - u * vals[:, 0].abs() - err(self._head_norms[i1], self._head_resid[i1], lo, hn)
        tokens, unsure = settle(h, vals, idx, best_low, lo, hn)
        if len(unsure):
            # A flat distribution: most such rows are settled by a wider top k, the rest by full fp32
            # logits. (Full logits for even one row read the whole fp32 vocabulary matrix, about
            # 10 ms for SmolLM2; 200 GSM8K items, fp32: such a row came in about every other step.)
            vals, idx = approx[unsure].float().topk(min(self.screen_wide, approx.shape[-1]), dim=-1)
            wide, still = settle(h[unsure], vals, idx, best_low[unsure], lo[unsure], hn[unsure])
            if len(still):
                wide[still] = self.logits(h[unsure[still]]).argmax(-1)
            tokens[unsure] = wide
        return tokens

    _PREFILL_CHUNK = 32  # prompts per batched attention call (scores: chunk x heads x T x (start + T))

    def _prefill_groups(self, prefills: list[Prefill], spans):
        """Prompts that start at the same position (after the same shared prefix) are attended
        together, in chunks; a lone prompt goes alone. Per-prompt attention is ~10 small ops per
        layer: 200 prompts admitted at once made 60,000 of them."""
        by_start: dict[int, list] = {}
        for p, span in zip(prefills, spans, strict=True):
            by_start.setdefault(p.start, []).append((p, span))
        groups = []
        for members in by_start.values():
            for i in range(0, len(members), self._PREFILL_CHUNK):
                groups.append(members[i : i + self._PREFILL_CHUNK])
        return groups

    def _prefill_attention_batched(self, q, k, v, kc, vc, group, out) -> None:
        """Causal attention for several prompts with the same start: their new tokens are padded
        to a common length; positions before `start` (the shared prefix) come from the first
        prompt's slot, identical in all of them."""
        import torch

        start = group[0][0].start
        lens = [b - a for _, (a, b) in group]
        n, tmax = len(group), max(lens)
        dev = q.device
        flat = torch.cat([torch.arange(a, b, device=dev) for _, (a, b) in group])
        padded = torch.cat([torch.arange(t, device=dev) + i * tmax for i, t in enumerate(lens)])

        def pad(x):
            buf = x.new_zeros((n * tmax, *x.shape[1:]))
            buf[padded] = x[flat]
            return buf.view(n, tmax, *x.shape[1:])

        qp = pad(q).permute(0, 2, 1, 3).reshape(n, self.n_kv, self.group, tmax, self.head_dim)
        kp, vp = pad(k).transpose(1, 2), pad(v).transpose(1, 2)  # [n, kv, T, D]
        if start:
            slot = group[0][0].slot
            kp = torch.cat([kc[slot, :, :start].expand(n, -1, -1, -1), kp], dim=2)
            vp = torch.cat([self._rows(vc)[slot, :, :start].expand(n, -1, -1, -1), vp], dim=2)
        scores = torch.matmul(qp, kp[:, :, None].transpose(-1, -2)).float() * self.scale  # [n, kv, g, T, S+T]
        rows = torch.arange(tmax, device=dev)
        cols = torch.arange(start + tmax, device=dev) - start
        length = torch.tensor(lens, device=dev)
        allowed = (cols[None, None] <= rows[None, :, None]) & (cols[None, None] < length[:, None, None])
        allowed |= cols[None, None] < 0  # the shared prefix
        scores.masked_fill_(~allowed[:, None, None], float("-inf"))
        res = torch.matmul(scores.softmax(-1).to(self.dtype), vp[:, :, None])  # [n, kv, g, T, D]
        res = res.reshape(n, self.n_heads, tmax, self.head_dim).transpose(1, 2).reshape(n * tmax, self.n_heads, -1)
        out[flat] = res[padded]

    def _prefill_attention(self, q, kc, vc, start: int):
        """Causal attention of a prompt's queries [T, heads, D] over its slot's cache [kv, L, D]."""
        import torch

        t = q.shape[0]
        n = start + t
        qg = q.transpose(0, 1).reshape(self.n_kv, self.group, t, self.head_dim).to(self.dtype)
        keys, vals = kc[:, None, :n], self._rows(vc)[:, None, :n]  # [kv, 1, n, D], over the group
        scores = torch.matmul(qg, keys.transpose(-1, -2)).float() * self.scale
        causal = torch.ones((t, n), dtype=torch.bool, device=q.device).tril(start)
        scores.masked_fill_(~causal, float("-inf"))
        out = torch.matmul(scores.softmax(-1).to(self.dtype), vals)  # [kv, g, T, D]
        return out.reshape(self.n_heads, t, self.head_dim).transpose(0, 1)

    def _norm(self, x, weight, resid=None):
        """transformers' RMSNorm (x / rms(x) * weight, in fp32): in C, or torch's kernel. With
        `resid` (the bf16 path's last matmul output), x += resid first, in place, in the same pass."""
        import torch.nn.functional as F  # noqa: N812

        if resid is not None:
            return cpu_kernels.add_rms_norm(x, resid, weight, self.eps, out_dtype=self.dtype)
        if self.kernel:
            return cpu_kernels.rms_norm(x, weight, self.eps, out_dtype=self.dtype)
        return F.rms_norm(x, (x.shape[-1],), weight.float(), self.eps).to(self.dtype)


def _linear(x, w, b=None):
    """x @ w.T + b, with `w` a plain weight or one packed by `_onednn_pack`."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    if w.is_mkldnn:
        if x.shape[0] == 1:  # see _one_row
            return torch.ops.mkldnn._linear_pointwise(_one_row(x), w, b, "none", [], "")[:1]
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return F.linear(x, w, b)


def _one_row(x):
    """A one-row input twice: oneDNN runs a single row through another kernel, with another
    summation order, so a row alone in its step (the last rows of a run) came out a few ulps apart
    from the same row in a batch; in bf16 that flipped a near-tie (1 of 40 texts differed between
    batch 3 and batch 40, bench/RESULTS.md, eighth session). Two rows take the batched kernel."""
    return x.expand(2, -1).contiguous()


@cache
def _onednn_ok(dtype) -> bool:
    """oneDNN is in this torch build, runs `dtype` natively (bf16 needs AVX512-BF16 or AMX; emulated
    it would be slower than the plain path), and its packed linear gives the plain one's result.
    Checked once per process and dtype: every engine (one per evaluation) and its head ask again."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(5, 32, generator=g), torch.randn(24, 32, generator=g), torch.randn(24, generator=g)
        x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
        got = _linear(x, _onednn_pack(w), b).float()
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    want = x.float() @ w.float().T + b.float()
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: the result is rounded to 8 bits
    return bool(torch.allclose(got, want, rtol=tol, atol=tol))
