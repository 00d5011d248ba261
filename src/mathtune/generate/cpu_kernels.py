"""CPU kernels in C for the fast engine's fp32 and bf16 paths, compiled on first use and loaded with ctypes.

torch has no attention for CPUs that reads each row's own cache length, and its small ops cost a
pass over memory and a thread fork each; the kernels in kernels/engine_kernels.c do attention,
rotary + cache writes, RMSNorm and SiLU-times-up in one pass each. They are plain C with AVX-512
intrinsics and OpenMP,
built with the system C compiler for this CPU (`-march=native`) into mathtune's cache directory,
keyed by the source, the flags and the CPU, so a shared home directory never hands one machine
another's build. It links the OpenMP runtime by soname, so inside a process that has loaded torch
it shares torch's thread pool instead of starting a second one.

Anything missing (no compiler, no AVX-512, a failed build) makes `available()` false, and the
engine keeps its torch path; `MATHTUNE_KERNELS=0` forces that.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).parent / "kernels" / "engine_kernels.c"
# -std=c11: no FMA contraction of `a * b + c * d`, so elementwise formulas round as in torch
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]


def _cpu_key() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return os.uname().machine
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _build(compiler: str, source_path: Path = _SOURCE) -> Path:
    """The shared library of `source_path` (this package's kernels unless another version is asked
    for, as bench/attention.py does), compiled once per source, flags and CPU."""
    from mathtune.models import cache_dir

    source = source_path.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *_FLAGS]).encode() + _cpu_key().encode()).hexdigest()[:16]
    out = cache_dir() / "kernels" / f"engine_kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        command = [compiler, *_FLAGS, str(source_path), "-o", tmp, "-lm"]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
        os.replace(tmp, out)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@cache
def _library() -> Any:
    if os.environ.get("MATHTUNE_KERNELS", "1") == "0":
        return None
    compiler = _compiler()
    if compiler is None:
        log.info("no C compiler found: the fast engine uses torch ops")
        return None
    try:
        import torch  # noqa: F401  (its OpenMP runtime must be loaded first, so the kernel shares it)

        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or e
        log.warning("C kernels not built (%s): the fast engine uses torch ops", str(detail).strip()[:300])
        return None
    if not lib.mt_available():
        log.info("this CPU has no AVX-512: the fast engine uses torch ops")
        return None
    return _bind(lib)


def _bind(lib: Any) -> Any:
    """`lib` (a ctypes library of the kernel source) with its functions' signatures declared."""
    i64, ptr, f32, flag = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
    prefix = [ptr, ptr, i64]  # the shared prefix: keys, values, length
    lib.mt_attention.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, f32, flag, *prefix]
    lib.mt_attention.restype = ctypes.c_int
    lib.mt_rope_store.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, i64, flag]
    lib.mt_rope_store.restype = None
    lib.mt_rms_norm.argtypes = [ptr, ptr, ptr, i64, i64, f32, flag]
    lib.mt_rms_norm.restype = None
    lib.mt_add_rms_norm.argtypes = [ptr, ptr, ptr, ptr, i64, i64, f32, flag]
    lib.mt_add_rms_norm.restype = None
    lib.mt_silu_mul.argtypes = [ptr, ptr, i64, i64, flag]
    lib.mt_silu_mul.restype = None
    lib.mt_argmax_bf16.argtypes = [ptr, i64, i64, ptr]
    lib.mt_argmax_bf16.restype = None
    lib.mt_topk_bf16.argtypes = [ptr, i64, i64, i64, ptr, ptr]
    lib.mt_topk_bf16.restype = None
    return lib


def available(group: int, head_dim: int) -> bool:
    """Whether the kernels run here for this attention shape (query heads per KV head, head size)."""
    return 1 <= group <= 16 and head_dim % 16 == 0 and head_dim <= 256 and _library() is not None


def _check(*tensors, dtype=None) -> int:
    """The kernels' `bf` flag for these tensors: all fp32 (0) or all bf16 (1), on the CPU, with
    unit stride in the last dim; `dtype` pins the dtype instead of taking the first tensor's."""
    import torch

    dtype = dtype or tensors[0].dtype
    for t in tensors:
        if t.dtype != dtype or dtype not in (torch.float32, torch.bfloat16):
            raise ValueError("engine kernels take fp32 or bf16 tensors, all of one dtype")
        if t.device.type != "cpu" or t.stride(-1) != 1:
            raise ValueError("engine kernels take CPU tensors with unit stride in the last dim")
    return int(dtype == torch.bfloat16)


def _index(t):
    import torch

    return t.to(torch.int64).contiguous()


def attention(q, kc, vc, slot, pos, *, idle_pos: int, scale: float, shared=None):
    """Attention of each query token r over positions 0..pos[r] of cache slot slot[r].

    q: [n, heads, hd] (a view into the fused qkv is fine: rows may be strided); kc, vc: one
    layer's keys and values, [slots, kv, L, hd] each, contiguous; all fp32 or all bf16. Rows with
    pos == idle_pos output zeros. Returns [n, heads, hd] in their dtype (softmax and sums in fp32).
    `shared` = (keys, values) [kv, P, hd]: what positions 0..P-1 hold in every slot (the prompts'
    shared prefix), read from there: one copy stays in cache instead of one read per row.
    The shapes must pass `available` first."""
    import torch

    bf = _check(q, kc, vc)
    n, heads, hd = q.shape
    _, nkv, length, _ = kc.shape
    if q.stride(1) != hd or not (kc.is_contiguous() and vc.is_contiguous()) or vc.shape != kc.shape:
        raise ValueError("attention: unexpected layout")
    slot, pos = _index(slot), _index(pos)
    pk = pv = None
    if shared is not None:
        pk, pv = shared
        _check(pk, pv, dtype=q.dtype)
        shaped = pk.shape == pv.shape and pk.shape[0] == nkv and pk.shape[2] == hd
        if not (shaped and pk.is_contiguous() and pv.is_contiguous()):
            raise ValueError("attention: the shared prefix must be [kv, P, hd] keys and values, contiguous")
    prefix = (pk.data_ptr(), pv.data_ptr(), pk.shape[1]) if pk is not None else (None, None, 0)
    out = torch.empty((n, heads, hd), dtype=q.dtype)
    args = (kc.data_ptr(), vc.data_ptr(), slot.data_ptr(), pos.data_ptr(), out.data_ptr(), n, nkv, heads // nkv, hd)
    if _library().mt_attention(q.data_ptr(), q.stride(0), *args, length, idle_pos, scale, bf, *prefix) != 0:
        raise MemoryError("attention kernel: shapes not handled or no memory for its score buffers")
    return out


def rope_store(qkv, *, n_heads: int, n_kv: int, head_dim: int, cos, sin, slot, pos, kc, vc) -> None:
    """Rotary embedding applied in place to the query and key heads of qkv [T, width] (rows
    contiguous), and each token's key and value written to kc/vc [slots, kv, L, hd] at
    (slot[t], pos[t]). cos, sin: [positions, hd] fp32 tables; qkv and the caches fp32 or bf16."""
    import torch

    bf = _check(qkv, kc, vc)
    _check(cos, sin, dtype=torch.float32)
    if not (qkv.is_contiguous() and cos.is_contiguous() and sin.is_contiguous()):
        raise ValueError("rope_store: qkv and the tables must be contiguous")
    slot, pos = _index(slot), _index(pos)
    _library().mt_rope_store(
        qkv.data_ptr(), qkv.shape[0], qkv.shape[1], n_heads, n_kv, head_dim, cos.data_ptr(), sin.data_ptr(),
        slot.data_ptr(), pos.data_ptr(), kc.data_ptr(), vc.data_ptr(), kc.shape[2], bf,
    )  # fmt: skip


def rms_norm(x, weight, eps: float, out_dtype=None):
    """transformers' RMSNorm of each row of x [T, n] (fp32), computed in fp32; the result is fp32
    or, with `out_dtype` bf16, rounded once to bf16."""
    import torch

    x, weight = x.contiguous(), weight.float().contiguous()
    _check(x, weight, dtype=torch.float32)
    out = torch.empty(x.shape, dtype=out_dtype or torch.float32)
    bf = _check(out)
    _library().mt_rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], eps, bf)
    return out


def add_rms_norm(x, y, weight, eps: float, out_dtype=None):
    """x += y in place (x [T, n] fp32, contiguous; y bf16, the sum rounded once as torch's
    x.add_(y)), then `rms_norm(x, weight, eps, out_dtype)`, in one pass over each row."""
    import torch

    if not x.is_contiguous():
        raise ValueError("add_rms_norm: x must be contiguous (it is updated in place)")
    y, weight = y.contiguous(), weight.float().contiguous()
    _check(x, weight, dtype=torch.float32)
    _check(y, dtype=torch.bfloat16)
    if y.shape != x.shape:
        raise ValueError("add_rms_norm: x and y must have the same shape")
    out = torch.empty(x.shape, dtype=out_dtype or torch.float32)
    bf = _check(out)
    _library().mt_add_rms_norm(
        x.data_ptr(), y.data_ptr(), weight.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], eps, bf
    )
    return out


def silu_mul(gu, inter: int):
    """silu(gu[:, :inter]) * gu[:, inter:] for gu [T, 2 * inter] (rows contiguous), in gu's dtype
    (fp32 or bf16; computed in fp32)."""
    import torch

    gu = gu.contiguous()
    bf = _check(gu)
    out = torch.empty((gu.shape[0], inter), dtype=gu.dtype)
    _library().mt_silu_mul(gu.data_ptr(), out.data_ptr(), gu.shape[0], inter, bf)
    return out


def argmax_bf16(x):
    """torch.argmax(x, -1) of a bf16 matrix [rows, n] (first index on ties, NaN largest), faster."""
    import torch

    x = x.contiguous()
    if x.dtype != torch.bfloat16 or x.dim() != 2:
        raise ValueError("argmax_bf16 takes a 2-d bf16 tensor")
    _check(x)
    out = torch.empty(x.shape[0], dtype=torch.int64)
    _library().mt_argmax_bf16(x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr())
    return out


def topk_bf16(x, k: int):
    """(values as fp32, indices) of the k largest of each row of a bf16 matrix [rows, n], largest
    first; as torch.topk(x, k) up to the order of equal values (here: earlier index first)."""
    import torch

    x = x.contiguous()
    if x.dtype != torch.bfloat16 or x.dim() != 2 or not 1 <= k <= min(16, x.shape[1]):
        raise ValueError("topk_bf16 takes a 2-d bf16 tensor and 1 <= k <= min(16, columns)")
    _check(x)
    vals = torch.empty((x.shape[0], k), dtype=torch.float32)
    idx = torch.empty((x.shape[0], k), dtype=torch.int64)
    _library().mt_topk_bf16(x.data_ptr(), x.shape[0], x.shape[1], k, vals.data_ptr(), idx.data_ptr())
    bad = vals[:, 0].isnan()
    if bool(bad.any()):  # NaN rows: torch's rules (NaN counts as largest)
        v, i = x[bad].float().topk(k, dim=-1)
        vals[bad], idx[bad] = v, i
    return vals, idx
