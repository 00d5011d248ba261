"""CPU kernels in C for the fast engine, compiled on first use and loaded with ctypes.

torch has no fused decode attention for CPUs that reads each row's own cache length; the one
kernel here does (kernels/decode_attention.c). It is plain C with AVX-512 intrinsics and OpenMP,
built with the system C compiler for this CPU (`-march=native`) into mathtune's cache directory,
keyed by the source, the flags and the CPU, so a shared home directory never hands one machine
another's build. It links the OpenMP runtime by soname, so inside a process that has loaded torch
it shares torch's thread pool instead of starting a second one.

Anything missing (no compiler, no AVX-512, a failed build) leaves `decode_attention()` returning
None, and the engine keeps its torch path; `MATHTUNE_KERNELS=0` forces that.
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

_SOURCE = Path(__file__).parent / "kernels" / "decode_attention.c"
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]


def _cpu_key() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return os.uname().machine
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _build(compiler: str) -> Path:
    from mathtune.models import cache_dir

    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *_FLAGS]).encode() + _cpu_key().encode()).hexdigest()[:16]
    out = cache_dir() / "kernels" / f"decode_attention-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *_FLAGS, str(_SOURCE), "-o", tmp], check=True, capture_output=True, text=True, timeout=120
        )
        os.replace(tmp, out)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@cache
def _library() -> Any:
    if os.environ.get("MATHTUNE_KERNELS", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler found: the fast engine uses torch attention")
        return None
    try:
        import torch  # noqa: F401  (its OpenMP runtime must be loaded first, so the kernel shares it)

        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or e
        log.warning("C kernels not built (%s): the fast engine uses torch attention", str(detail).strip()[:300])
        return None
    if not lib.mt_available():
        log.info("this CPU has no AVX-512: the fast engine uses torch attention")
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.mt_decode_attention.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, ctypes.c_float]
    lib.mt_decode_attention.restype = ctypes.c_int
    return lib


def available(group: int, head_dim: int) -> bool:
    """Whether `decode_attention` runs here for this attention shape (query heads per KV head,
    head size)."""
    return 1 <= group <= 16 and head_dim % 16 == 0 and head_dim <= 256 and _library() is not None


def decode_attention(q, kc, vc, pos, *, idle_pos: int, scale: float):
    """Attention of one query token per row over that row's cached positions 0..pos[row].

    q: [n, heads, hd] fp32 with unit strides inside a row (a view into the fused qkv is fine);
    kc, vc: one layer's keys and values, [slots, kv, L, hd] each, contiguous; pos: [n] int64, with
    `idle_pos` marking rows to skip (their output is zeros). Returns [n, heads, hd]. The shapes
    must pass `available` first."""
    import torch

    lib = _library()
    n, heads, hd = q.shape
    slots, nkv, length, _ = kc.shape
    if lib is None or q.dtype != torch.float32 or kc.dtype != torch.float32 or vc.shape != kc.shape:
        raise ValueError("decode_attention: fp32 CPU tensors with keys and values of one shape")
    if n > slots or q.stride(2) != 1 or q.stride(1) != hd or not (kc.is_contiguous() and vc.is_contiguous()):
        raise ValueError("decode_attention: unexpected strides")
    pos = pos.to(torch.int64).contiguous()
    out = torch.empty((n, heads, hd), dtype=torch.float32)
    args = (q.stride(0), kc.data_ptr(), vc.data_ptr(), pos.data_ptr(), out.data_ptr(), n, nkv, heads // nkv, hd)
    if lib.mt_decode_attention(q.data_ptr(), *args, length, idle_pos, scale) != 0:
        raise MemoryError("decode_attention: shapes not handled or no memory for the score buffers")
    return out
