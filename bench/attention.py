"""Benchmark: the fast engine's C attention kernel vs torch's scaled_dot_product_attention.

One decode step's attention at SmolLM2-135M's shapes (30 layers, 9 query heads on 3 KV heads of
64): `--rows` rows, each attending to its own `--positions` cached positions, every layer its
own cache (so, as in the engine, a layer's keys and values come from memory, not from cache).
- baseline: `F.scaled_dot_product_attention` (enable_gqa) on the same cache views, what a padded
  batch in torch does when every row has the same length (the kernel's best case for torch);
- mathtune: `cpu_kernels.attention`.
`--against FILE` also builds another version of the kernel source (e.g. `git show
<commit>:src/mathtune/generate/kernels/engine_kernels.c > old.c`), checks that its outputs are
bit-identical to this one's, and times it: an A/B of a kernel change in one process.
Prints the best of `--repeats` per side. Last line: `RATIO attention <torch ms / mathtune ms>`.

    .venv/bin/python bench/attention.py --dtype bf16
    .venv/bin/python bench/attention.py --dtype fp32 --against /tmp/old.c
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from mathtune.openmp import configure_openmp  # noqa: E402

OPENMP = configure_openmp()


def _other_library(source: Path):
    """Another version of the kernel source, built and bound as cpu_kernels does its own."""
    from mathtune.generate import cpu_kernels

    compiler = cpu_kernels._compiler()
    if compiler is None:
        sys.exit("--against needs a C compiler")
    return cpu_kernels._bind(ctypes.CDLL(str(cpu_kernels._build(compiler, source))))


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: first touch of the caches, thread pool start
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--positions", type=int, default=187, help="cached positions each row attends to")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--against", type=Path, default=None, help="another kernel source to A/B against")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F  # noqa: N812

    from mathtune.generate import cpu_kernels

    nkv, group, hd = 3, 3, 64
    if not cpu_kernels.available(group, hd):
        sys.exit("the C kernels are not available on this machine (no compiler or no AVX-512)")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    n, p, length = args.rows, args.positions, args.positions + 64
    g = torch.Generator().manual_seed(0)
    caches = [
        tuple(torch.randn((n, nkv, length, hd), generator=g).to(dtype) for _ in range(2)) for _ in range(args.layers)
    ]
    q = torch.randn((n, nkv * group, hd), generator=g).to(dtype)
    slot, pos = torch.arange(n), torch.full((n,), p - 1)
    scale = hd**-0.5
    print(
        f"{args.layers} layers x {n} rows x {p} positions, {nkv * group} heads on {nkv} KV heads of {hd}, "
        f"{args.dtype}, threads {torch.get_num_threads()}, OpenMP wait: {OPENMP}"
    )

    def ours():
        return [cpu_kernels.attention(q, kc, vc, slot, pos, idle_pos=length - 1, scale=scale) for kc, vc in caches]

    def other_kernel(lib):
        with mock.patch.object(cpu_kernels, "_library", lambda: lib):  # the same wrapper, the other build
            return ours()

    def theirs():
        qs = q[:, :, None]  # [rows, heads, 1, hd]
        with torch.inference_mode():
            return [
                F.scaled_dot_product_attention(qs, kc[:, :, :p], vc[:, :, :p], scale=scale, enable_gqa=True)
                for kc, vc in caches
            ]

    # Same results as torch (up to summation order), checked on one layer before timing.
    want = theirs()[0][:, :, 0].float()
    got = ours()[0].float()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    if not torch.allclose(got, want, rtol=tol, atol=tol):
        sys.exit(f"kernel and torch disagree: max |diff| {float((got - want).abs().max()):.3g}")
    t_ours = _best(ours, args.repeats)
    t_theirs = _best(theirs, args.repeats)
    kv_bytes = args.layers * n * p * nkv * hd * 2 * q.element_size()
    print(f"mathtune kernel: {t_ours * 1e3:.1f} ms ({kv_bytes / t_ours / 1e9:.1f} GB/s of cache read)")
    print(f"torch SDPA: {t_theirs * 1e3:.1f} ms")
    if args.against is not None:
        lib = _other_library(args.against)
        same = all(torch.equal(a, b) for a, b in zip(ours(), other_kernel(lib), strict=True))
        t_other = _best(lambda: other_kernel(lib), args.repeats)
        print(f"{args.against}: {t_other * 1e3:.1f} ms; outputs bit-identical to this kernel's: {same}")
        print(f"this kernel vs {args.against.name}: {t_other / t_ours:.2f}x")
    print(f"RATIO attention {t_theirs / t_ours:.2f}")


if __name__ == "__main__":
    main()
