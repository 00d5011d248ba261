/* CPU kernels of the fast engine (generate/llama_engine.py) for its fp32 and bf16 paths.

Why C: after the matmuls, a decode step on a CPU is a long tail of small torch ops per layer
(norms, rotary, cache scatters, masks, softmax, activation), each one a pass over memory and an
OpenMP fork; and torch's batched attention reads every row's cache up to the widest row. Each
kernel here does one of those jobs in one pass, and attention reads each row's own positions once.
Numerics follow transformers' fp32 Llama: the same formulas and rounding steps; only summation
order and the exp polynomial (about 1 ulp) differ, which moves results in the last bits, as any
other matmul order does. Built by generate/cpu_kernels.py with -std=c11 (no FMA contraction, so
`a * b - c * d` rounds as torch's elementwise ops do).

bf16 (flag `bf`): qkv, the caches, attention's output and the matmul inputs these kernels write
are bf16 (rounded to nearest even, as torch's .to(torch.bfloat16)); all arithmetic is fp32, and
the residual stream the norms read stays fp32.

Layouts (those of LlamaEngine):
  qkv  [T, width]: per token nq query heads, nkv key heads, nkv value heads of hd floats each
  kc   [slots, nkv, L, hd] keys; vc [slots, nkv, L, hd] values
  cos, sin [positions, hd]: transformers' rotary tables
Query head j * group + i attends with KV head j (transformers' repeat_kv order). */

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) /* every AVX-512 CPU but Xeon Phi */
#include <immintrin.h>

int mt_available(void) { return 1; }

/* expf, Cephes' polynomial (about 1 ulp); below -87.3 it returns exp(-87.3) ~ 1e-38 instead of
   a denormal, above 88.7 infinity. */
static inline __m512 exp_any(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.8f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}

static inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* bf16 <-> fp32. bf16 is the top half of an fp32; rounding is to nearest even, NaN stays NaN
   (torch's c10::BFloat16 does the same). Plain AVX-512 (F + BW), no AVX512-BF16 needed. */
static inline __m512 ld_bf16(const uint16_t *p, __mmask16 k) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16));
}
static inline __m256i to_bf16(__m512 x) {
    const __m512i b = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    return _mm512_cvtepi32_epi16(r);
}
/* element i of an fp32 (bf == 0) or bf16 (bf == 1) array, 16 lanes; masked lanes read as 0 */
static inline __m512 ld(const void *p, int64_t i, __mmask16 k, int bf) {
    return bf ? ld_bf16((const uint16_t *)p + i, k) : _mm512_maskz_loadu_ps(k, (const float *)p + i);
}
static inline void st(void *p, int64_t i, __mmask16 k, __m512 x, int bf) {
    if (bf)
        _mm256_mask_storeu_epi16((uint16_t *)p + i, k, to_bf16(x));
    else
        _mm512_mask_storeu_ps((float *)p + i, k, x);
}
static inline float ld1(const void *p, int64_t i, int bf) {
    if (!bf) return ((const float *)p)[i];
    const uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
#define MAX_GROUP 16
#define VG 3 /* query heads and 16-float chunks per pass of the value loop (one_head_group) */
#define VC 4
#define MAX_HD 256

/* Asks for value row t (into L2) while the score loop reads key row t, for a task whose rows the
   previous task could not ask for (see ahead_t): both streams then load at once. */
static inline void prefetch_row(const void *base, int64_t offset, int64_t bytes) {
    for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch((const char *)base + offset + b, _MM_HINT_T1);
}

/* The next task's keys and values, asked for (into L2) a slice at a time while this task computes.
   Each task reads two stretches of memory (a head's keys and values in one slot), and the hardware
   prefetcher starts every stretch from scratch: without this, a task's loads wait on memory with
   nothing else to do, and with it they find their lines arriving. Spread thinly (an equal slice
   every 16 positions of the score and value loops): asking for all of it at once stalls on the
   queue of misses. One decode step's attention at 128 rows x 190 positions x 30 layers (bf16),
   one core: 55-58 ms -> 40-42 ms; two cores at 256 rows, where both stream at once: 74 -> 64 ms. */
typedef struct {
    const char *k, *v;       /* the next task's keys and values, NULL for none */
    int64_t at, end, batch;  /* bytes still to ask for: at..end-1 (from both); bytes per ahead_step */
} ahead_t;

static inline void ahead_start(ahead_t *a, int64_t calls) {
    a->batch = a->k == NULL || calls < 1 ? 0 : ((a->end - a->at + calls - 1) / calls + 63) / 64 * 64;
}

static inline void ahead_step(ahead_t *a) {
    const int64_t stop = a->at + a->batch < a->end ? a->at + a->batch : a->end;
    for (; a->at < stop; a->at += 64) {
        _mm_prefetch(a->k + a->at, _MM_HINT_T1);
        _mm_prefetch(a->v + a->at, _MM_HINT_T1);
    }
}

/* The value loop for bf16 values, 32 at a time: interleaving a 32-value load with zeros widens it
   to fp32 in one instruction per 16 (against two, zero-extend and shift, per 16 otherwise). The
   lanes then hold the values in a fixed shuffled order, within each 128-bit quarter: values 0-3 and
   8-11 (and so on) from the low interleave, 4-7 and 12-15 from the high one; the caller puts them
   back with lo_half / hi_half. Every lane's sum is the same FMA chain as the plain loop's, so the
   output is bit-identical. acc[i][c], acc[i][c + 1]: the two halves of 32 values at 16 * c. */
static inline __attribute__((always_inline)) void value_pairs(__m512 acc[VG][VC], const float *s, int64_t i0,
                                                              int64_t gi, int64_t cn, int64_t sp, const uint16_t *V,
                                                              const uint16_t *Vp, int64_t np, int64_t len, int64_t hd,
                                                              ahead_t *nx) {
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t t = 0; t < len; ++t) {
        if ((t & 15) == 0) ahead_step(nx);
        const uint16_t *vt = (t < np ? Vp : V) + t * hd;
#pragma GCC unroll 8
        for (int c = 0; c < VC; c += 2) {
            if (c >= cn) break;
            const __m512i raw = _mm512_loadu_si512(vt + 16 * c);
            const __m512 lo = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, raw));
            const __m512 hi = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, raw));
#pragma GCC unroll 8
            for (int i = 0; i < VG; ++i) {
                if (i >= gi) break;
                const __m512 p = _mm512_set1_ps(s[(i0 + i) * sp + t]);
                acc[i][c] = _mm512_fmadd_ps(p, lo, acc[i][c]);
                acc[i][c + 1] = _mm512_fmadd_ps(p, hi, acc[i][c + 1]);
            }
        }
    }
}

#if defined(__AVX512BF16__)
#define HAVE_DPBF16 1
#else
#define HAVE_DPBF16 0
#endif

/* One KV head's group of query heads q [group, hd] (fp32) over len cached positions of K, V
   ([len, hd], fp32 or bf16): o [group, hd] (fp32 or bf16). s: scratch for the scores.
   qb: the same query heads in bf16 when K is bf16 and this CPU has AVX512-BF16 (NULL otherwise):
   q . K then takes one dpbf16 per 32 elements (bf16 products are exact in fp32; only the
   summation order differs), instead of widening every key to fp32 first.
   Kp, Vp: positions 0..np-1 read from there instead ([np, hd], the prompts' shared prefix, one copy
   for all rows: it stays in cache while every row's own positions stream from memory). */
static inline __attribute__((always_inline)) void one_head_group(const float *q, const uint16_t *qb, const void *K,
                                                                 const void *V, const void *Kp, const void *Vp,
                                                                 int64_t np, void *o, float *s, ahead_t *nx,
                                                                 int64_t len, int64_t group, int64_t hd, int64_t sp,
                                                                 float scale, int bf) {
    const int64_t nv = hd / 16;
    const __mmask16 all = 0xFFFF;
    /* value_pairs' lanes back in order: the first and second 16 of each 32 values */
    const __m512i lo_half = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i hi_half = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    ahead_start(nx, 2 * ((len + 15) / 16)); /* a slice every 16 positions of the score and value loops */
    /* scores: s[i * sp + t] = scale * q_i . K_t */
#if HAVE_DPBF16
    if (bf && qb != NULL) {
        const int64_t nb = hd / 32;
        for (int64_t t = 0; t < len; ++t) {
            const uint16_t *kt = (const uint16_t *)(t < np ? Kp : K) + t * hd;
            if ((t & 15) == 0) ahead_step(nx);
            if (nx->k == NULL) prefetch_row(t < np ? Vp : V, t * hd * 2, hd * 2);
            __m512bh kb[MAX_HD / 32];
            for (int64_t c = 0; c < nb; ++c) kb[c] = (__m512bh)_mm512_loadu_si512(kt + 32 * c);
            for (int64_t i = 0; i < group; ++i) {
                __m512 acc = _mm512_setzero_ps();
                for (int64_t c = 0; c < nb; ++c)
                    acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(qb + i * hd + 32 * c), kb[c]);
                s[i * sp + t] = _mm512_reduce_add_ps(acc) * scale;
            }
        }
    } else
#endif
    for (int64_t t = 0; t < len; ++t) {
        __m512 kt[MAX_HD / 16];
        if ((t & 15) == 0) ahead_step(nx);
        if (nx->k == NULL) prefetch_row(t < np ? Vp : V, t * hd * (bf ? 2 : 4), hd * (bf ? 2 : 4));
        for (int64_t c = 0; c < nv; ++c) kt[c] = ld(t < np ? Kp : K, t * hd + 16 * c, all, bf);
        for (int64_t i = 0; i < group; ++i) {
            const float *qi = q + i * hd;
            __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qi), kt[0]);
            for (int64_t c = 1; c < nv; ++c) acc = _mm512_fmadd_ps(_mm512_loadu_ps(qi + 16 * c), kt[c], acc);
            s[i * sp + t] = _mm512_reduce_add_ps(acc) * scale;
        }
    }
    /* softmax per query head */
    float inv[MAX_GROUP];
    for (int64_t i = 0; i < group; ++i) {
        float *si = s + i * sp;
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int64_t t = 0; t < len; t += 16)
            mx = _mm512_mask_max_ps(mx, tail_mask(len - t), mx, _mm512_loadu_ps(si + t));
        const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
        __m512 sum = _mm512_setzero_ps();
        for (int64_t t = 0; t < len; t += 16) {
            __mmask16 k = tail_mask(len - t);
            __m512 e = _mm512_maskz_mov_ps(k, exp_any(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, si + t), m)));
            _mm512_storeu_ps(si + t, e);
            sum = _mm512_add_ps(sum, e);
        }
        inv[i] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    /* out_i = sum_t p_i[t] V_t: V row by row, every query head accumulating in registers (no
       reductions), up to VG heads x VC 16-float chunks per pass over the rows. A fixed-size block of
       accumulators stays in registers; one sized for the largest group and head size lived on the
       stack, a store per FMA, which made this loop half of the kernel's time. */
    for (int64_t i0 = 0; i0 < group; i0 += VG) {
        const int64_t gi = group - i0 < VG ? group - i0 : VG;
        for (int64_t c0 = 0; c0 < nv; c0 += VC) {
            const int64_t cn = nv - c0 < VC ? nv - c0 : VC;
            __m512 acc[VG][VC];
#pragma GCC unroll 8
            for (int i = 0; i < VG; ++i)
#pragma GCC unroll 8
                for (int c = 0; c < VC; ++c) acc[i][c] = _mm512_setzero_ps();
            if (bf && cn % 2 == 0) {
                value_pairs(acc, s, i0, gi, cn, sp, (const uint16_t *)V + 16 * c0, (const uint16_t *)Vp + 16 * c0,
                            np, len, hd, nx);
#pragma GCC unroll 8
                for (int i = 0; i < VG; ++i)
#pragma GCC unroll 8
                    for (int c = 0; c < VC; c += 2)
                        if (i < gi && c < cn) {
                            const __m512 k = _mm512_set1_ps(inv[i0 + i]);
                            const int64_t at = (i0 + i) * hd + 16 * (c0 + c);
                            st(o, at, all, _mm512_mul_ps(_mm512_permutex2var_ps(acc[i][c], lo_half, acc[i][c + 1]), k), 1);
                            st(o, at + 16, all, _mm512_mul_ps(_mm512_permutex2var_ps(acc[i][c], hi_half, acc[i][c + 1]), k), 1);
                        }
                continue;
            }
            for (int64_t t = 0; t < len; ++t) {
                if ((t & 15) == 0) ahead_step(nx);
                const void *vt = t < np ? Vp : V;
#pragma GCC unroll 8
                for (int c = 0; c < VC; ++c) {
                    if (c >= cn) break;
                    const __m512 v = ld(vt, t * hd + 16 * (c0 + c), all, bf);
#pragma GCC unroll 8
                    for (int i = 0; i < VG; ++i) {
                        if (i >= gi) break;
                        acc[i][c] = _mm512_fmadd_ps(_mm512_set1_ps(s[(i0 + i) * sp + t]), v, acc[i][c]);
                    }
                }
            }
#pragma GCC unroll 8
            for (int i = 0; i < VG; ++i)
#pragma GCC unroll 8
                for (int c = 0; c < VC; ++c)
                    if (i < gi && c < cn)
                        st(o, (i0 + i) * hd + 16 * (c0 + c), all, _mm512_mul_ps(acc[i][c], _mm512_set1_ps(inv[i0 + i])), bf);
        }
    }
}

/* The common (group, head_dim) pairs get their own copies, so the compiler keeps the per-head
   accumulators in registers (with a runtime group they live in memory: 3x slower here). */
#define SPECIAL(G, HD)                                                                                         \
    static void head_group_##G##_##HD(const float *q, const uint16_t *qb, const void *K, const void *V,          \
                                      const void *Kp, const void *Vp, int64_t np, void *o, float *s,           \
                                      ahead_t *nx, int64_t len, int64_t sp, float scale, int bf) {             \
        if (bf)                                                                                                \
            one_head_group(q, qb, K, V, Kp, Vp, np, o, s, nx, len, G, HD, sp, scale, 1);                       \
        else                                                                                                   \
            one_head_group(q, qb, K, V, Kp, Vp, np, o, s, nx, len, G, HD, sp, scale, 0);                       \
    }
SPECIAL(1, 64) SPECIAL(2, 64) SPECIAL(3, 64) SPECIAL(4, 64) SPECIAL(6, 64) SPECIAL(7, 64) SPECIAL(8, 64)
SPECIAL(1, 128) SPECIAL(2, 128) SPECIAL(3, 128) SPECIAL(4, 128) SPECIAL(6, 128) SPECIAL(7, 128) SPECIAL(8, 128)

static void head_group(const float *q, const uint16_t *qb, const void *K, const void *V, const void *Kp,
                       const void *Vp, int64_t np, void *o, float *s, ahead_t *nx, int64_t len, int64_t group,
                       int64_t hd, int64_t sp, float scale, int bf) {
#define CASE(G, HD)                                                                       \
    if (group == G && hd == HD) {                                                         \
        head_group_##G##_##HD(q, qb, K, V, Kp, Vp, np, o, s, nx, len, sp, scale, bf);     \
        return;                                                                           \
    }
    CASE(1, 64) CASE(2, 64) CASE(3, 64) CASE(4, 64) CASE(6, 64) CASE(7, 64) CASE(8, 64)
    CASE(1, 128) CASE(2, 128) CASE(3, 128) CASE(4, 128) CASE(6, 128) CASE(7, 128) CASE(8, 128)
#undef CASE
    if (bf)
        one_head_group(q, qb, K, V, Kp, Vp, np, o, s, nx, len, group, hd, sp, scale, 1);
    else
        one_head_group(q, qb, K, V, Kp, Vp, np, o, s, nx, len, group, hd, sp, scale, 0);
}

/* Attention of n query tokens, each over positions 0..pos[r] of cache slot slot[r]: decode rows
   (one token per slot) and prompt tokens (many per slot, causal through their positions) alike.
   q: token r's heads at q + r * q_stride (elements). pos[r] == idle_pos marks an idle decode slot:
   its output is zeros. out: [n, nkv * group, hd]. bf: q, the caches and out are bf16, else fp32.
   pk, pv [nkv, np, hd]: positions 0..np-1 of every slot, read from there (np = 0: none).
   Returns 0, or -1 (shapes not handled, or no memory). */
int mt_attention(const void *q, int64_t q_stride, const void *kc, const void *vc, const int64_t *slot,
                 const int64_t *pos, void *out, int64_t n, int64_t nkv, int64_t group, int64_t hd, int64_t L,
                 int64_t idle_pos, float scale, int bf, const void *pk, const void *pv, int64_t np) {
    if (hd % 16 != 0 || hd > MAX_HD || group > MAX_GROUP || group < 1) return -1;
    const int64_t sp = (L + 15) / 16 * 16;
    const size_t es = bf ? 2 : 4; /* element size */
    int failed = 0;
#pragma omp parallel
    {
        /* scores, then (bf16 only) the query heads in fp32 */
        float *s = (float *)aligned_alloc(64, (size_t)(group * sp + group * hd) * sizeof(float));
        if (s == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 4)
        for (int64_t task = 0; task < n * nkv; ++task) {
            if (s == NULL) continue;
            const int64_t r = task / nkv, j = task % nkv;
            char *o = (char *)out + (size_t)((r * nkv + j) * group * hd) * es;
            if (pos[r] == idle_pos || pos[r] < 0 || pos[r] >= L) {
                memset(o, 0, (size_t)(group * hd) * es);
                continue;
            }
            const int64_t qi = r * q_stride + j * group * hd;
            const float *qf = (const float *)q + qi;
            const uint16_t *qb = NULL;
            if (bf && HAVE_DPBF16 && hd % 32 == 0) {
                qb = (const uint16_t *)q + qi;
            } else if (bf) {
                float *buf = s + group * sp;
                for (int64_t d = 0; d < group * hd; d += 16) _mm512_storeu_ps(buf + d, ld(q, qi + d, 0xFFFF, 1));
                qf = buf;
            }
            const size_t base = (size_t)((slot[r] * nkv + j) * L * hd) * es;
            const size_t pbase = (size_t)(j * np * hd) * es;
            ahead_t nx = {NULL, NULL, 0, 0, 0};
            /* The next task: this thread's next one but every 4th. bf16 only: fp32 reads twice the
               bytes per position and already streams near this CPU's bandwidth without it (one core,
               100 rows: 60-70 ms either way, 2-8 ms slower with it). */
            if (bf && task + 1 < n * nkv) {
                const int64_t r2 = (task + 1) / nkv, j2 = (task + 1) % nkv;
                if (pos[r2] != idle_pos && pos[r2] >= np && pos[r2] < L) { /* its own rows, past the prefix */
                    const size_t b2 = (size_t)((slot[r2] * nkv + j2) * L * hd) * es;
                    nx = (ahead_t){(const char *)kc + b2, (const char *)vc + b2, np * hd * (int64_t)es,
                                   (pos[r2] + 1) * hd * (int64_t)es, 0};
                }
            }
            head_group(qf, qb, (const char *)kc + base, (const char *)vc + base, np ? (const char *)pk + pbase : NULL,
                       np ? (const char *)pv + pbase : NULL, np, o, s, &nx, pos[r] + 1, group, hd, sp, scale, bf);
        }
        free(s);
    }
    return failed ? -1 : 0;
}

/* x * cos + rotate_half(x) * sin for the head at element x of qkv, in place, 16 lanes at a time
   (bf constant: one copy per storage type). Each product is rounded, then the two are added: no
   fused multiply-add, as torch computes it. */
static inline __attribute__((always_inline)) void rotate_head(void *qkv, int64_t x, int64_t half, const float *c,
                                                              const float *sn, int bf) {
    for (int64_t d = 0; d < half; d += 16) {
        const __mmask16 k = tail_mask(half - d);
        const __m512 x1 = ld(qkv, x + d, k, bf), x2 = ld(qkv, x + d + half, k, bf);
        const __m512 a1 = _mm512_mul_ps(x1, _mm512_maskz_loadu_ps(k, c + d));
        const __m512 b1 = _mm512_mul_ps(x2, _mm512_maskz_loadu_ps(k, sn + d));
        const __m512 a2 = _mm512_mul_ps(x2, _mm512_maskz_loadu_ps(k, c + d + half));
        const __m512 b2 = _mm512_mul_ps(x1, _mm512_maskz_loadu_ps(k, sn + d + half));
        st(qkv, x + d, k, _mm512_sub_ps(a1, b1), bf);
        st(qkv, x + d + half, k, _mm512_add_ps(a2, b2), bf);
    }
}

/* Rotary embedding of the query and key heads of each token, in place in qkv, then the token's
   key and value written to its cache slot at its position. As transformers computes it:
   x * cos + rotate_half(x) * sin, each product rounded, then added. bf: qkv and the caches are
   bf16 (the rotated heads are rounded once, as the torch path's .to(bf16) does). */
void mt_rope_store(void *qkv, int64_t T, int64_t width, int64_t nq, int64_t nkv, int64_t hd, const float *cos_t,
                   const float *sin_t, const int64_t *slot, const int64_t *pos, void *kc, void *vc, int64_t L, int bf) {
    const int64_t half = hd / 2;
    const size_t es = bf ? 2 : 4;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
        const float *c = cos_t + pos[t] * hd, *sn = sin_t + pos[t] * hd;
        const int64_t row = t * width;
        for (int64_t h = 0; h < nq + nkv; ++h) {
            if (bf)
                rotate_head(qkv, row + h * hd, half, c, sn, 1);
            else
                rotate_head(qkv, row + h * hd, half, c, sn, 0);
        }
        for (int64_t j = 0; j < nkv; ++j) {
            const size_t at = (size_t)(((slot[t] * nkv + j) * L + pos[t]) * hd) * es;
            memcpy((char *)kc + at, (const char *)qkv + (size_t)(row + (nq + j) * hd) * es, (size_t)hd * es);
            memcpy((char *)vc + at, (const char *)qkv + (size_t)(row + (nq + nkv + j) * hd) * es, (size_t)hd * es);
        }
    }
}

/* The second half of RMSNorm for one row xr of n floats, given acc (16 lanes summing to x . x):
   out[at..] = (x * rsqrt(mean(x^2) + eps)) * w, each product rounded, as transformers. */
static inline void normalize_row(const float *xr, __m512 acc, const float *w, void *out, int64_t at, int64_t n,
                                 float eps, int bf) {
    const __m512 r = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)n + eps));
    for (int64_t d = 0; d < n; d += 16) {
        const __mmask16 k = tail_mask(n - d);
        const __m512 y = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, xr + d), r);
        st(out, at + d, k, _mm512_mul_ps(y, _mm512_maskz_loadu_ps(k, w + d)), bf);
    }
}

/* out = (x * rsqrt(mean(x^2) + eps)) * w per row of n floats (transformers' LlamaRMSNorm); x and w
   fp32, out fp32 or (bf) bf16, rounded once. */
void mt_rms_norm(const float *x, const float *w, void *out, int64_t T, int64_t n, float eps, int bf) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
        const float *xr = x + t * n;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < n; d += 16) {
            const __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - d), xr + d);
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        normalize_row(xr, acc, w, out, t * n, n, eps, bf);
    }
}

/* x += y, then out = RMSNorm(x) as mt_rms_norm, in one pass per row: the residual add of a bf16
   matmul's output y (x fp32; the sum rounded once, as torch's x.add_(y)) and the next norm. */
void mt_add_rms_norm(float *x, const uint16_t *y, const float *w, void *out, int64_t T, int64_t n, float eps, int bf) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
        float *xr = x + t * n;
        const uint16_t *yr = y + t * n;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < n; d += 16) {
            const __mmask16 k = tail_mask(n - d);
            const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(k, xr + d), ld_bf16(yr + d, k));
            _mm512_mask_storeu_ps(xr + d, k, v);
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        normalize_row(xr, acc, w, out, t * n, n, eps, bf);
    }
}

/* out[t, :inter] = silu(gu[t, :inter]) * gu[t, inter:], silu(g) = g / (1 + exp(-g)) as torch;
   bf: gu and out are bf16. */
void mt_silu_mul(const void *gu, void *out, int64_t T, int64_t inter, int bf) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
        const int64_t g = t * 2 * inter, u = g + inter;
        for (int64_t d = 0; d < inter; d += 16) {
            const __mmask16 k = tail_mask(inter - d);
            const __m512 x = ld(gu, g + d, k, bf);
            const __m512 e = exp_any(_mm512_sub_ps(_mm512_setzero_ps(), x));
            const __m512 si = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
            st(out, t * inter + d, k, _mm512_mul_ps(si, ld(gu, u + d, k, bf)), bf);
        }
    }
}

/* out[r] = the index of the largest of the n bf16 values of row r, the first one on ties, a NaN
   counting as largest (torch.argmax's rules). For greedy decoding in bf16: torch's argmax on bf16
   took 18 ms for 200 x 49,152 logits here, and a float() copy plus fp32 argmax 12 ms. */
void mt_argmax_bf16(const uint16_t *x, int64_t rows, int64_t n, int64_t *out) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const uint16_t *row = x + r * n;
        __m512 mx = _mm512_set1_ps(-INFINITY);
        __mmask16 nan = 0;
        for (int64_t d = 0; d < n; d += 16) {
            const __mmask16 k = tail_mask(n - d);
            const __m512 v = ld_bf16(row + d, k);
            nan |= _mm512_mask_cmp_ps_mask(k, v, v, _CMP_UNORD_Q);
            mx = _mm512_mask_max_ps(mx, k, mx, v);
        }
        int64_t best = 0;
        if (nan) {
            while (best < n && ld1(row, best, 1) == ld1(row, best, 1)) ++best;
        } else {
            const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
            for (int64_t d = 0; d < n; d += 16) {
                const __mmask16 hit = _mm512_mask_cmp_ps_mask(tail_mask(n - d), ld_bf16(row + d, tail_mask(n - d)), m,
                                                              _CMP_EQ_OQ);
                if (hit) {
                    best = d + __builtin_ctz(hit);
                    break;
                }
            }
        }
        out[r] = best;
    }
}

/* The k largest of the n bf16 values of each row, largest first, an earlier index first among
   equals: vals [rows, k] (fp32), idx [rows, k]. k <= 16 and n >= k. A row holding a NaN gets
   vals[0] = NaN (the caller redoes it with torch). For the fp32 engine's greedy screen: on
   200 x 49,152 logits torch's topk took 5.8-8.5 ms here, this 1.2 ms; blocks of 16 below the
   running k-th value are skipped with one compare. */
void mt_topk_bf16(const uint16_t *x, int64_t rows, int64_t n, int64_t k, float *vals, int64_t *idx) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const uint16_t *row = x + r * n;
        float tv[16];
        int64_t ti[16];
        int64_t cnt = 0;
        int nan = 0;
        __m512 thr = _mm512_set1_ps(-INFINITY);
        for (int64_t d = 0; d < n; d += 16) {
            const __mmask16 valid = tail_mask(n - d);
            const __m512 v = ld_bf16(row + d, valid);
            nan |= _mm512_mask_cmp_ps_mask(valid, v, v, _CMP_UNORD_Q) != 0;
            __mmask16 hit = cnt < k ? valid : _mm512_mask_cmp_ps_mask(valid, v, thr, _CMP_GT_OQ);
            while (hit) {
                const int lane = __builtin_ctz(hit);
                hit &= hit - 1;
                const float val = ld1(row, d + lane, 1);
                if (cnt == k && !(val > tv[k - 1])) continue;
                int64_t at = cnt < k ? cnt++ : k - 1; /* a full list drops its last */
                while (at > 0 && val > tv[at - 1]) {
                    tv[at] = tv[at - 1];
                    ti[at] = ti[at - 1];
                    --at;
                }
                tv[at] = val;
                ti[at] = d + lane;
                if (cnt == k) thr = _mm512_set1_ps(tv[k - 1]);
            }
        }
        for (int64_t j = 0; j < k; ++j) {
            vals[r * k + j] = tv[j];
            idx[r * k + j] = ti[j];
        }
        if (nan) vals[r * k] = NAN;
    }
}

#else /* no AVX-512 (F, BW, VL): the engine keeps its torch path */

int mt_available(void) { return 0; }
int mt_attention(void) { return -1; }
void mt_rope_store(void) {}
void mt_rms_norm(void) {}
void mt_add_rms_norm(void) {}
void mt_silu_mul(void) {}
void mt_argmax_bf16(void) {}
void mt_topk_bf16(void) {}

#endif
