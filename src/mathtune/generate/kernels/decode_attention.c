/* Decode attention for the fast engine (generate/llama_engine.py), one query token per row.

Why a kernel: on a CPU, batched decode attention is bound by reading the KV cache. Done with
torch ops, every row reads the widest row's positions (one padded bmm) and the scores go through
four more passes (scale, mask, softmax, cast). Here each (row, KV head) reads only its own
positions, once, and scores stay in L1/L2. fp32 throughout, softmax as torch computes it
(subtract the max, exponentiate, normalise); only summation order and the exp polynomial differ,
which moves results in the last bits, like any other matmul order.

Layouts (those of LlamaEngine's cache):
  q    [n, nkv * group, hd], row stride q_stride floats (q may be a view into the fused qkv)
  kc   [slots, nkv, L, hd]        keys
  vc   [slots, nkv, L, hd]        values
  pos  [n]                        the row's last position (its own token, already cached);
                                  pos == idle_pos marks an idle slot: its output is zeros
  out  [n, nkv * group, hd]       contiguous
Query head j * group + i attends with KV head j (transformers' repeat_kv order). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>

int mt_available(void) { return 1; }

/* expf for x <= 0 (arguments are score - max), Cephes' polynomial: about 1 ulp. */
static inline __m512 exp_neg(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
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

#define MAX_GROUP 16
#define MAX_HD 256

static inline __attribute__((always_inline)) void one_head_group(const float *q, const float *K, const float *V, float *o, float *s, int64_t len,
                           int64_t group, int64_t hd, int64_t L, int64_t sp, float scale) {
    const int64_t nv = hd / 16;
    /* scores: s[i * sp + t] = scale * q_i . K_t */
    for (int64_t t = 0; t < len; ++t) {
        const float *kt = K + t * hd;
        for (int64_t i = 0; i < group; ++i) {
            const float *qi = q + i * hd;
            __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qi), _mm512_loadu_ps(kt));
            for (int64_t c = 1; c < nv; ++c)
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(qi + 16 * c), _mm512_loadu_ps(kt + 16 * c), acc);
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
            __m512 e = _mm512_maskz_mov_ps(k, exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, si + t), m)));
            _mm512_storeu_ps(si + t, e);
            sum = _mm512_add_ps(sum, e);
        }
        inv[i] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    /* out_i = sum_t p_i[t] V_t: V row by row, every query head of the group accumulating in
       registers (no reductions) */
    __m512 acc[MAX_GROUP][MAX_HD / 16];
    for (int64_t i = 0; i < group; ++i)
        for (int64_t c = 0; c < nv; ++c) acc[i][c] = _mm512_setzero_ps();
    for (int64_t t = 0; t < len; ++t) {
        const float *vt = V + t * hd;
        for (int64_t c = 0; c < nv; ++c) {
            const __m512 v = _mm512_loadu_ps(vt + 16 * c);
            for (int64_t i = 0; i < group; ++i) acc[i][c] = _mm512_fmadd_ps(_mm512_set1_ps(s[i * sp + t]), v, acc[i][c]);
        }
    }
    for (int64_t i = 0; i < group; ++i)
        for (int64_t c = 0; c < nv; ++c) _mm512_storeu_ps(o + i * hd + 16 * c, _mm512_mul_ps(acc[i][c], _mm512_set1_ps(inv[i])));
}

/* The common (group, head_dim) pairs get their own copies, so the compiler keeps the per-head
   accumulators in registers (with a runtime group they live in memory: 3x slower here). */
#define SPECIAL(G, HD)                                                                                       \
    static void head_group_##G##_##HD(const float *q, const float *K, const float *V, float *o, float *s, \
                                      int64_t len, int64_t L, int64_t sp, float scale) {                   \
        one_head_group(q, K, V, o, s, len, G, HD, L, sp, scale);                                          \
    }
SPECIAL(1, 64) SPECIAL(2, 64) SPECIAL(3, 64) SPECIAL(4, 64) SPECIAL(6, 64) SPECIAL(7, 64) SPECIAL(8, 64)
SPECIAL(1, 128) SPECIAL(2, 128) SPECIAL(3, 128) SPECIAL(4, 128) SPECIAL(6, 128) SPECIAL(7, 128) SPECIAL(8, 128)

static void head_group(const float *q, const float *K, const float *V, float *o, float *s, int64_t len,
                       int64_t group, int64_t hd, int64_t L, int64_t sp, float scale) {
#define CASE(G, HD) \
    if (group == G && hd == HD) return head_group_##G##_##HD(q, K, V, o, s, len, L, sp, scale);
    CASE(1, 64) CASE(2, 64) CASE(3, 64) CASE(4, 64) CASE(6, 64) CASE(7, 64) CASE(8, 64)
    CASE(1, 128) CASE(2, 128) CASE(3, 128) CASE(4, 128) CASE(6, 128) CASE(7, 128) CASE(8, 128)
#undef CASE
    one_head_group(q, K, V, o, s, len, group, hd, L, sp, scale);
}

/* Returns 0, or -1 when the shapes are outside what this kernel handles (the caller falls back). */
int mt_decode_attention(const float *q, int64_t q_stride, const float *kc, const float *vc, const int64_t *pos,
                        float *out, int64_t n, int64_t nkv, int64_t group, int64_t hd, int64_t L, int64_t idle_pos,
                        float scale) {
    if (hd % 16 != 0 || hd > MAX_HD || group > MAX_GROUP || group < 1) return -1;
    const int64_t sp = (L + 15) / 16 * 16;
    int failed = 0;
#pragma omp parallel
    {
        float *s = (float *)aligned_alloc(64, (size_t)(group * sp) * sizeof(float));
        if (s == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 4)
        for (int64_t task = 0; task < n * nkv; ++task) {
            if (s == NULL) continue;
            const int64_t r = task / nkv, j = task % nkv;
            float *o = out + (r * nkv + j) * group * hd;
            if (pos[r] == idle_pos || pos[r] < 0 || pos[r] >= L) {
                memset(o, 0, (size_t)(group * hd) * sizeof(float));
                continue;
            }
            const int64_t len = pos[r] + 1;
            head_group(q + r * q_stride + j * group * hd, kc + (r * nkv + j) * L * hd, vc + (r * nkv + j) * L * hd, o,
                       s, len, group, hd, L, sp, scale);
        }
        free(s);
    }
    return failed ? -1 : 0;
}

#else /* no AVX-512: the engine keeps its torch path */

int mt_available(void) { return 0; }

int mt_decode_attention(const float *q, int64_t q_stride, const float *kc, const float *vc, const int64_t *pos,
                        float *out, int64_t n, int64_t nkv, int64_t group, int64_t hd, int64_t L, int64_t idle_pos,
                        float scale) {
    (void)q, (void)q_stride, (void)kc, (void)vc, (void)pos, (void)out, (void)n, (void)nkv, (void)group;
    (void)hd, (void)L, (void)idle_pos, (void)scale;
    return -1;
}

#endif
