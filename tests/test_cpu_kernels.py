"""The fast engine's C kernels compute what transformers' Llama computes (fp32, bf16), and fail over cleanly."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mathtune.generate import cpu_kernels  # noqa: E402

needs_kernels = pytest.mark.skipif(not cpu_kernels.available(1, 16), reason="the C kernels do not build here")


def _reference_attention(q, kc, vc, slot, pos, scale):
    """fp64 softmax(q K^T * scale) V per token over its slot's positions 0..pos, GQA as transformers."""
    n, heads, hd = q.shape
    nkv = kc.shape[1]
    g = heads // nkv
    out = torch.zeros((n, heads, hd), dtype=torch.float64)
    for r in range(n):
        for h in range(heads):
            j = h // g  # repeat_kv: query head h reads KV head h // group
            keys, vals = kc[slot[r], j, : pos[r] + 1].double(), vc[slot[r], j, : pos[r] + 1].double()
            out[r, h] = ((q[r, h].double() @ keys.T) * scale).softmax(-1) @ vals
    return out


@needs_kernels
@pytest.mark.parametrize(("nkv", "group", "hd"), [(3, 3, 64), (2, 1, 16), (1, 7, 128), (2, 5, 32)])
def test_attention_matches_fp64_per_slot_and_length(nkv, group, hd):
    # (2, 5, 32) has no specialised copy in the C file: the generic loop runs.
    g = torch.Generator().manual_seed(0)
    slots, length = 4, 70
    kc = torch.randn((slots, nkv, length, hd), generator=g) * 3  # sharp softmax: exp accuracy matters
    vc = torch.randn((slots, nkv, length, hd), generator=g)
    qkv = torch.randn((6, nkv * group * hd + 2 * nkv * hd), generator=g) * 3
    q = qkv[:, : nkv * group * hd].view(6, nkv * group, hd)  # strided rows, as in the engine
    slot = torch.tensor([0, 1, 2, 3, 1, 1])
    pos = torch.tensor([0, 15, 16, 68, 33, length - 1])  # lengths around the 16-lane blocks; last: idle
    got = cpu_kernels.attention(q, kc, vc, slot, pos, idle_pos=length - 1, scale=hd**-0.5)
    want = _reference_attention(q[:5], kc, vc, slot, pos, hd**-0.5)
    assert float((got[:5].double() - want).abs().max()) < 1e-5
    assert torch.equal(got[5], torch.zeros_like(got[5]))  # the idle row is skipped


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_reads_the_shared_prefix_from_its_one_copy(dtype):
    """With `shared`, positions below its length come from it, bit for bit what reading the same
    values from each slot gives; the slots' own copies of those positions are never read."""
    g = torch.Generator().manual_seed(6)
    nkv, group, hd, slots, length, p = 3, 3, 64, 4, 60, 24
    kc = (torch.randn((slots, nkv, length, hd), generator=g) * 3).to(dtype)
    vc = torch.randn((slots, nkv, length, hd), generator=g).to(dtype)
    pk, pv = kc[0, :, :p].clone(), vc[0, :, :p].clone()
    kc[:, :, :p], vc[:, :, :p] = pk, pv  # every slot holds the prefix
    q = (torch.randn((5, nkv * group, hd), generator=g) * 3).to(dtype)
    slot, pos = torch.tensor([0, 1, 2, 3, 1]), torch.tensor([5, 23, 24, 58, 40])  # inside and past the prefix
    want = cpu_kernels.attention(q, kc, vc, slot, pos, idle_pos=length - 1, scale=0.125)
    kc[:, :, :p], vc[:, :, :p] = float("nan"), float("nan")  # the slots' copies must not be read
    got = cpu_kernels.attention(q, kc, vc, slot, pos, idle_pos=length - 1, scale=0.125, shared=(pk, pv))
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="shared prefix"):
        cpu_kernels.attention(q, kc, vc, slot, pos, idle_pos=length - 1, scale=0.125, shared=(pk[:2], pv[:2]))


@needs_kernels
def test_rope_store_is_bit_identical_to_transformers_rotary():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = torch.Generator().manual_seed(1)
    nq, nkv, hd, length = 6, 2, 16, 40
    qkv = torch.randn((5, (nq + 2 * nkv) * hd), generator=g)
    before = qkv.clone()
    angles = torch.randn((length, hd // 2), generator=g) * 3
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    slot, pos = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([3, 4, 0, 39, 7])
    kc, vc = torch.zeros((3, nkv, length, hd)), torch.zeros((3, nkv, length, hd))
    cpu_kernels.rope_store(qkv, n_heads=nq, n_kv=nkv, head_dim=hd, cos=cos, sin=sin, slot=slot, pos=pos, kc=kc, vc=vc)
    q = before[:, : nq * hd].view(5, nq, hd).transpose(0, 1)[None]  # [1, heads, T, D]
    k = before[:, nq * hd : (nq + nkv) * hd].view(5, nkv, hd).transpose(0, 1)[None]
    want_q, want_k = apply_rotary_pos_emb(q, k, cos[pos][None], sin[pos][None])
    assert torch.equal(qkv[:, : nq * hd].view(5, nq, hd), want_q[0].transpose(0, 1))
    assert torch.equal(qkv[:, nq * hd : (nq + nkv) * hd].view(5, nkv, hd), want_k[0].transpose(0, 1))
    for t in range(5):  # each token's key and value sit at its slot and position
        assert torch.equal(kc[slot[t], :, pos[t]], want_k[0, :, t])
        assert torch.equal(vc[slot[t], :, pos[t]], before[t, (nq + nkv) * hd :].view(nkv, hd))
    assert int((kc != 0).any(-1).sum()) == 5 * nkv  # nothing else written


@needs_kernels
def test_rms_norm_and_silu_mul_match_transformers():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator().manual_seed(2)
    x = torch.randn((7, 100), generator=g) * 4  # 100: a tail past the 16-lane blocks
    norm = LlamaRMSNorm(100, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(100, generator=g))
        want = norm(x)
    got = cpu_kernels.rms_norm(x, norm.weight.detach(), 1e-5)
    assert torch.allclose(got, want, rtol=2e-6, atol=1e-6)

    gu = torch.randn((5, 2 * 90), generator=g) * 6
    want = torch.nn.functional.silu(gu[:, :90]) * gu[:, 90:]
    assert torch.allclose(cpu_kernels.silu_mul(gu, 90), want, rtol=2e-6, atol=1e-6)
    assert cpu_kernels.silu_mul(torch.tensor([[-200.0, 200.0, 1.0, 1.0]]), 2).tolist() == [[-0.0, 200.0]]


@needs_kernels
@pytest.mark.parametrize(("nkv", "group", "hd"), [(3, 3, 64), (2, 5, 48)])
def test_attention_in_bf16_matches_fp64_of_the_bf16_inputs(nkv, group, hd):
    # hd 64: AVX512-BF16's dot products for q . K where the CPU has them; hd 48 (not a multiple of
    # 32) and a group of 5: the loop that widens the keys to fp32, as on AVX-512 CPUs without them.
    g = torch.Generator().manual_seed(3)
    slots, length = 3, 50
    kc = (torch.randn((slots, nkv, length, hd), generator=g) * 3).bfloat16()
    vc = torch.randn((slots, nkv, length, hd), generator=g).bfloat16()
    qkv = (torch.randn((4, (nkv * group + 2 * nkv) * hd), generator=g) * 3).bfloat16()
    q = qkv[:, : nkv * group * hd].view(4, nkv * group, hd)
    slot, pos = torch.tensor([0, 2, 1, 2]), torch.tensor([0, 17, 48, length - 1])
    got = cpu_kernels.attention(q, kc, vc, slot, pos, idle_pos=length - 1, scale=hd**-0.5)
    assert got.dtype == torch.bfloat16
    want = _reference_attention(q[:3], kc, vc, slot, pos, hd**-0.5)
    # fp32 arithmetic, one rounding to bf16 at the end: within half a bf16 ulp (at most 2^-8 relative), plus fp32 noise
    assert bool(((got[:3].double() - want).abs() <= want.abs() * 2.0**-8 + 1e-5).all())
    assert torch.equal(got[3], torch.zeros_like(got[3]))


@needs_kernels
def test_bf16_rope_norm_and_silu_are_the_fp32_kernels_rounded_once():
    """In bf16 the kernels compute in fp32 and round each result once to nearest even, as torch's
    .to(torch.bfloat16) does: bit-identical to the fp32 kernels on the same (bf16) inputs, rounded."""
    g = torch.Generator().manual_seed(4)
    nq, nkv, hd, length = 6, 2, 16, 40
    qkv = torch.randn((5, (nq + 2 * nkv) * hd), generator=g).bfloat16()
    angles = torch.randn((length, hd // 2), generator=g) * 3
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    slot, pos = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([3, 4, 0, 39, 7])
    wide = qkv.float()
    caches = {dt: (torch.zeros((3, nkv, length, hd), dtype=dt), torch.zeros((3, nkv, length, hd), dtype=dt))
              for dt in (torch.float32, torch.bfloat16)}  # fmt: skip
    for x, dt in ((wide, torch.float32), (qkv, torch.bfloat16)):
        kc, vc = caches[dt]
        cpu_kernels.rope_store(x, n_heads=nq, n_kv=nkv, head_dim=hd, cos=cos, sin=sin, slot=slot, pos=pos, kc=kc, vc=vc)
    assert torch.equal(qkv, wide.bfloat16())
    for a, b in zip(caches[torch.bfloat16], caches[torch.float32], strict=True):
        assert torch.equal(a, b.bfloat16())

    x = torch.randn((7, 100), generator=g) * 4
    w = torch.randn(100, generator=g)
    got = cpu_kernels.rms_norm(x, w, 1e-5, out_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, cpu_kernels.rms_norm(x, w, 1e-5).bfloat16())

    # the residual add fused into the norm: x.add_(y) then the norm, bit for bit, x updated in place
    y = (torch.randn((7, 100), generator=g) * 3).bfloat16()
    fused_x = x.clone()
    got = cpu_kernels.add_rms_norm(fused_x, y, w, 1e-5, out_dtype=torch.bfloat16)
    x.add_(y)
    assert torch.equal(fused_x, x)
    assert torch.equal(got, cpu_kernels.rms_norm(x, w, 1e-5, out_dtype=torch.bfloat16))
    assert torch.equal(cpu_kernels.add_rms_norm(x.clone(), y, w, 1e-5), cpu_kernels.rms_norm(x + y, w, 1e-5))

    gu = (torch.randn((5, 2 * 90), generator=g) * 6).bfloat16()
    got = cpu_kernels.silu_mul(gu, 90)
    assert got.dtype == torch.bfloat16 and torch.equal(got, cpu_kernels.silu_mul(gu.float(), 90).bfloat16())
    nan = cpu_kernels.silu_mul(torch.tensor([[float("nan"), 1.0]]).bfloat16(), 1)
    assert bool(nan.isnan().all())  # NaN stays NaN through the rounding


@needs_kernels
def test_argmax_bf16_is_torch_argmax_with_ties_and_nan():
    g = torch.Generator().manual_seed(5)
    x = (torch.randn((6, 1000), generator=g) * 4).bfloat16()  # 1000: a tail past the 16-lane blocks
    x[1, 17] = x[1, 900] = 99.0  # a tie: the first index wins
    x[2, 999] = 99.0  # the max in the tail
    x[3, 5] = float("nan")  # NaN counts as the largest, as in torch
    x[4] = -1.0  # all equal
    x[5, 500] = float("inf")
    want = [int(x[0].float().argmax()), 17, 999, 5, 0, 500]
    assert cpu_kernels.argmax_bf16(x).tolist() == x.argmax(-1).tolist() == want


@needs_kernels
def test_topk_bf16_gives_the_k_largest_in_order_ties_to_the_earlier_index():
    g = torch.Generator().manual_seed(7)
    x = (torch.randn((5, 1000), generator=g) * 4).bfloat16()  # bf16: many exact ties
    x[1, 3] = x[1, 700] = x[1, 999] = 50.0  # a three-way tie at the top
    x[2, 990:] = 60.0  # the top 10 all in the tail block, all equal
    x[3, 10] = float("nan")
    x[4, :8] = -5.0
    x[4, 8:] = -6.0
    vals, idx = cpu_kernels.topk_bf16(x, 8)
    want_vals, want_idx = x.float().topk(8, dim=-1)
    assert torch.equal(vals.nan_to_num(99), want_vals.nan_to_num(99))  # the k largest, largest first; NaN largest
    for r in range(5):  # the values at the returned indices are those values; equal values: earlier first
        assert torch.equal(x[r, idx[r]].float(), vals[r]) or r == 3
    assert idx[1, :3].tolist() == [3, 700, 999] and idx[2].tolist() == list(range(990, 998))
    assert idx[3, 0] == 10 and idx[4].tolist() == list(range(8))


def test_without_a_compiler_or_when_disabled_the_engine_keeps_torch(monkeypatch, tmp_path):
    monkeypatch.setenv("MATHTUNE_CACHE", str(tmp_path))  # no build cached from an earlier test
    try:
        cpu_kernels._library.cache_clear()
        monkeypatch.setenv("MATHTUNE_KERNELS", "0")
        assert not cpu_kernels.available(3, 64)
        cpu_kernels._library.cache_clear()
        monkeypatch.delenv("MATHTUNE_KERNELS")
        monkeypatch.setenv("CC", "false")  # a "compiler" that fails: no exception, torch path
        monkeypatch.setattr(cpu_kernels.shutil, "which", lambda name: "/bin/false" if name == "false" else None)
        assert not cpu_kernels.available(3, 64)
        assert not list(tmp_path.rglob("*.so*"))  # no half-written library left behind
    finally:
        cpu_kernels._library.cache_clear()
    monkeypatch.undo()
    assert cpu_kernels.available(3, 64) == (cpu_kernels._library() is not None)
    assert not cpu_kernels.available(3, 24)  # head sizes off the 16-lane grid are never taken
