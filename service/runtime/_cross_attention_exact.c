/* The decoder step's cross-attention in onnxruntime's own order of operations (its CPU
 * MultiHeadAttention with a key padding mask: AttentionCPUBase::ApplyAttention over MLAS), so that a
 * step cut at the node translates as the whole graph does. On an AVX-512 CPU MLAS takes, per
 * sentence and head:
 *  - the scores as an SGEMM with B transposed, alpha 1/sqrt(depth) and beta 1 over the mask's addends
 *    (0, or -10,000 where the mask is 0): each score a chain of fused multiply-adds over the depth,
 *    from zero, then fma(sum, alpha, addend); without a mask, beta 0: sum * alpha. The depth is taken
 *    in slices of SGEMM's StrideK, each slice's sum added in the same way;
 *  - the softmax: the maximum; each exp by MlasComputeSumExpF32KernelAvx512F's polynomial and
 *    VSCALEFPS, summed in 16 lanes, 16 positions at a time, the lanes reduced in its order; each exp
 *    times 1 / sum;
 *  - the values as an SGEMM with alpha 1, beta 0: each output a chain of fused multiply-adds over the
 *    positions (slices of StrideK as above), except for a sentence of one row, which MLAS's M = 1
 *    kernel takes.
 * Here the head's keys are transposed once, so that a vector holds 16 positions' chains and a
 * sentence's rows run theirs side by side; the values' chains hold 16 depths each, four rows side by
 * side; the next head's keys and values are fetched while one is computed. The runtime checks the
 * kernel against onnxruntime's node bit for bit before it cuts a step there (cross_exact.py), and
 * tests/test_attention.py holds it to the node. Compiled without contraction of multiplies and adds
 * into FMAs: each rounding is MLAS's. */
#include "_cross_attention_exact.h"
#include "_prefetch.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EXACT_X86 1
#endif

#define MASKED_SCORE (-10000.0f) /* MultiHeadAttention's mask_filter_value by default */

int cross_attention_exact_available(void) {
#ifdef EXACT_X86
    static int widest = -1;
    if (widest < 0) {
        __builtin_cpu_init();
        widest = 0;
        if (__builtin_cpu_supports("avx512f")) {
            widest = EXACT_AVX512;
        } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            widest = EXACT_AVX2;
        }
    }
    return widest;
#else
    return 0;
#endif
}

#define GROUP 8  /* rows of a sentence whose score chains run side by side */
#define WROWS 4  /* rows whose value chains run side by side */

ptrdiff_t cross_attention_exact_scratch(ptrdiff_t depth, ptrdiff_t length) {
    const ptrdiff_t padded = (length + 15) / 16 * 16;
    return (depth + GROUP + 1) * padded;
}

/* MLAS's SGEMM slice of K for a product of N columns over K (MlasSgemmOperation's StrideK). */
static ptrdiff_t stride_k(ptrdiff_t n, ptrdiff_t k) {
    ptrdiff_t stride_n = 128, stride = 128;
    if (n >= k) {
        while (stride / 2 >= k) {
            stride_n *= 2;
            stride /= 2;
        }
    } else {
        while (stride_n > 16 && stride_n / 2 >= n) {
            stride *= 2;
            stride_n /= 2;
        }
    }
    return stride;
}

#ifdef EXACT_X86
/* The vectors' functions that _cross_attention_exact_body.h names, each defined for both ways of
 * holding 16 floats; NAMED picks the set. */
#define v_zero NAMED(v_zero)
#define v_set1 NAMED(v_set1)
#define v_load NAMED(v_load)
#define v_load_first NAMED(v_load_first)
#define v_store NAMED(v_store)
#define v_store_first NAMED(v_store_first)
#define v_add NAMED(v_add)
#define v_sub NAMED(v_sub)
#define v_mul NAMED(v_mul)
#define v_fma NAMED(v_fma)
#define v_max_first NAMED(v_max_first)
#define v_add_first NAMED(v_add_first)
#define v_max_lane NAMED(v_max_lane)
#define v_mlas_sum NAMED(v_mlas_sum)
#define v_mlas_exp NAMED(v_mlas_exp)
#define INLINE(isa) __attribute__((target(isa), always_inline)) static inline

/* MlasExpConstants: the argument's floor, the magic bias that rounds to an integer, log2(e), ln 2 in
 * two parts, the polynomial's coefficients. */
#define EXP_LOWEST (-1.039720840454e2f)
#define EXP_BIAS 12582912.0f
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HIGH (-6.93145752e-1f)
#define EXP_LN2_LOW (-1.42860677e-6f)
#define EXP_P0 0x1.694000p-10f
#define EXP_P1 0x1.125edcp-7f
#define EXP_P2 0x1.555b5ap-5f
#define EXP_P3 0x1.555450p-3f
#define EXP_P4 0x1.fffff6p-2f

/* ---- 16 floats as one AVX-512 vector: MLAS's own instructions ---- */
#define NAMED(name) name##_avx512
typedef __m512 V16_avx512;

static inline __mmask16 first(ptrdiff_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}
INLINE("avx512f") __m512 v_zero(void) { return _mm512_setzero_ps(); }
INLINE("avx512f") __m512 v_set1(float x) { return _mm512_set1_ps(x); }
INLINE("avx512f") __m512 v_load(const float *p) { return _mm512_loadu_ps(p); }
INLINE("avx512f") __m512 v_load_first(const float *p, ptrdiff_t n) { return _mm512_maskz_loadu_ps(first(n), p); }
INLINE("avx512f") void v_store(float *p, __m512 x) { _mm512_storeu_ps(p, x); }
INLINE("avx512f") void v_store_first(float *p, ptrdiff_t n, __m512 x) { _mm512_mask_storeu_ps(p, first(n), x); }
INLINE("avx512f") __m512 v_add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
INLINE("avx512f") __m512 v_sub(__m512 a, __m512 b) { return _mm512_sub_ps(a, b); }
INLINE("avx512f") __m512 v_mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
INLINE("avx512f") __m512 v_fma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
INLINE("avx512f") __m512 v_max_first(__m512 best, ptrdiff_t n, __m512 x) {
    return _mm512_mask_max_ps(best, first(n), best, x);
}
INLINE("avx512f") __m512 v_add_first(__m512 sum, ptrdiff_t n, __m512 x) {
    return _mm512_mask_add_ps(sum, first(n), sum, x);
}
INLINE("avx512f") float v_max_lane(__m512 x) { return _mm512_reduce_max_ps(x); }

/* MLAS's reduction of its 16 accumulator lanes: lane i + 8 plus lane i, then pairs, then halves. */
INLINE("avx512f") float v_mlas_sum(__m512 sum) {
    const __m256 upper = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sum), 1));
    const __m256 h = _mm256_add_ps(upper, _mm512_castps512_ps256(sum));
    const __m128 p = _mm_hadd_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)); /* h0+h1 .. h6+h7 */
    return (p[0] + p[1]) + (p[2] + p[3]);
}

/* exp(x) as MlasComputeSumExpF32KernelAvx512F computes it, 2^m put in by VSCALEFPS. */
INLINE("avx512f") __m512 v_mlas_exp(__m512 x) {
    const __m512 bias = _mm512_set1_ps(EXP_BIAS);
    x = _mm512_max_ps(_mm512_set1_ps(EXP_LOWEST), x);
    __m512 m = _mm512_fmadd_ps(_mm512_set1_ps(EXP_LOG2E), x, bias);
    m = _mm512_sub_ps(m, bias);
    x = _mm512_fmadd_ps(m, _mm512_set1_ps(EXP_LN2_HIGH), x);
    x = _mm512_fmadd_ps(m, _mm512_set1_ps(EXP_LN2_LOW), x);
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, m);
}

/* keys [length][depth] -> keys_t [depth][padded], 16 positions by 16 depths at a time in registers;
 * positions past `length` are 0. */
__attribute__((target("avx512f"))) static void NAMED(transpose_keys)(const float *keys, ptrdiff_t length,
                                                                     ptrdiff_t depth, ptrdiff_t padded,
                                                                     float *keys_t) {
    for (ptrdiff_t t0 = 0; t0 < padded; t0 += 16) {
        for (ptrdiff_t d0 = 0; d0 < depth; d0 += 16) {
            const __mmask16 keep = first(depth - d0);
            __m512 r[16], u[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                const float *row = keys + (t0 + i) * depth + d0;
                r[i] = t0 + i < length ? _mm512_maskz_loadu_ps(keep, row) : _mm512_setzero_ps();
            }
#pragma GCC unroll 8
            for (int i = 0; i < 16; i += 2) {
                u[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
                u[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
            }
#pragma GCC unroll 4
            for (int i = 0; i < 16; i += 4) {
                r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(u[i]), _mm512_castps_pd(u[i + 2])));
                r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(u[i]), _mm512_castps_pd(u[i + 2])));
                r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(u[i + 1]), _mm512_castps_pd(u[i + 3])));
                r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(u[i + 1]), _mm512_castps_pd(u[i + 3])));
            }
#pragma GCC unroll 2
            for (int i = 0; i < 16; i += 8) {
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    u[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
                    u[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xdd);
                }
            }
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                r[j] = _mm512_shuffle_f32x4(u[j], u[j + 8], 0x88);
                r[j + 8] = _mm512_shuffle_f32x4(u[j], u[j + 8], 0xdd);
            }
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                if (d0 + i < depth) {
                    _mm512_storeu_ps(keys_t + (d0 + i) * padded + t0, r[i]);
                }
            }
        }
    }
}


#define V V16_avx512
#define ISA "avx512f"
#include "_cross_attention_exact_body.h"

/* ---- 16 floats as two AVX2 vectors (lanes 0 to 7, 8 to 15): each lane's arithmetic as above, so
 * that a CPU without AVX-512 computes what onnxruntime computes on one with it ---- */
#define NAMED(name) name##_avx2
typedef struct {
    __m256 lo, hi;
} V16_avx2;

/* Lanes i < n of 8 set (all ones), others 0. */
INLINE("avx2,fma") __m256i keep8(ptrdiff_t n) {
    const ptrdiff_t k = n < 0 ? 0 : (n > 8 ? 8 : n);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
INLINE("avx2,fma") V16_avx2 pair(__m256 lo, __m256 hi) {
    V16_avx2 v = {lo, hi};
    return v;
}
INLINE("avx2,fma") V16_avx2 v_zero(void) { return pair(_mm256_setzero_ps(), _mm256_setzero_ps()); }
INLINE("avx2,fma") V16_avx2 v_set1(float x) { return pair(_mm256_set1_ps(x), _mm256_set1_ps(x)); }
INLINE("avx2,fma") V16_avx2 v_load(const float *p) { return pair(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)); }
INLINE("avx2,fma") V16_avx2 v_load_first(const float *p, ptrdiff_t n) {
    if (n >= 16) {
        return v_load(p);
    }
    return pair(_mm256_maskload_ps(p, keep8(n)), _mm256_maskload_ps(p + 8, keep8(n - 8)));
}
INLINE("avx2,fma") void v_store(float *p, V16_avx2 x) {
    _mm256_storeu_ps(p, x.lo);
    _mm256_storeu_ps(p + 8, x.hi);
}
INLINE("avx2,fma") void v_store_first(float *p, ptrdiff_t n, V16_avx2 x) {
    if (n >= 16) {
        v_store(p, x);
        return;
    }
    _mm256_maskstore_ps(p, keep8(n), x.lo);
    _mm256_maskstore_ps(p + 8, keep8(n - 8), x.hi);
}
INLINE("avx2,fma") V16_avx2 v_add(V16_avx2 a, V16_avx2 b) {
    return pair(_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi));
}
INLINE("avx2,fma") V16_avx2 v_sub(V16_avx2 a, V16_avx2 b) {
    return pair(_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi));
}
INLINE("avx2,fma") V16_avx2 v_mul(V16_avx2 a, V16_avx2 b) {
    return pair(_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi));
}
INLINE("avx2,fma") V16_avx2 v_fma(V16_avx2 a, V16_avx2 b, V16_avx2 c) {
    return pair(_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi));
}
/* VMAXPS's and VADDPS's lanes, kept where the mask leaves them out (as AVX-512's masked forms). */
INLINE("avx2,fma") V16_avx2 v_max_first(V16_avx2 best, ptrdiff_t n, V16_avx2 x) {
    const __m256 lo = _mm256_max_ps(best.lo, x.lo), hi = _mm256_max_ps(best.hi, x.hi);
    return pair(_mm256_blendv_ps(best.lo, lo, _mm256_castsi256_ps(keep8(n))),
                _mm256_blendv_ps(best.hi, hi, _mm256_castsi256_ps(keep8(n - 8))));
}
INLINE("avx2,fma") V16_avx2 v_add_first(V16_avx2 sum, ptrdiff_t n, V16_avx2 x) {
    const __m256 lo = _mm256_add_ps(sum.lo, x.lo), hi = _mm256_add_ps(sum.hi, x.hi);
    return pair(_mm256_blendv_ps(sum.lo, lo, _mm256_castsi256_ps(keep8(n))),
                _mm256_blendv_ps(sum.hi, hi, _mm256_castsi256_ps(keep8(n - 8))));
}
INLINE("avx2,fma") float v_max_lane(V16_avx2 x) {
    __m256 m = _mm256_max_ps(x.lo, x.hi);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}
INLINE("avx2,fma") float v_mlas_sum(V16_avx2 sum) {
    const __m256 h = _mm256_add_ps(sum.hi, sum.lo); /* lane i + 8 plus lane i */
    const __m128 p = _mm_hadd_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    return (p[0] + p[1]) + (p[2] + p[3]);
}
/* VSCALEFPS's p * 2^m for the m here (-150 <= m <= 0: the argument is at most 0): p * 2^(m + 64),
 * exact, then * 2^-64, which rounds once as VSCALEFPS does. */
INLINE("avx2,fma") __m256 exp8(__m256 x) {
    const __m256 bias = _mm256_set1_ps(EXP_BIAS);
    x = _mm256_max_ps(_mm256_set1_ps(EXP_LOWEST), x);
    __m256 m = _mm256_fmadd_ps(_mm256_set1_ps(EXP_LOG2E), x, bias);
    m = _mm256_sub_ps(m, bias);
    x = _mm256_fmadd_ps(m, _mm256_set1_ps(EXP_LN2_HIGH), x);
    x = _mm256_fmadd_ps(m, _mm256_set1_ps(EXP_LN2_LOW), x);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.0f));
    const __m256i exponent = _mm256_add_epi32(_mm256_cvtps_epi32(m), _mm256_set1_epi32(127 + 64));
    const __m256 scaled = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(exponent, 23)));
    return _mm256_mul_ps(scaled, _mm256_set1_ps(0x1p-64f));
}
INLINE("avx2,fma") V16_avx2 v_mlas_exp(V16_avx2 x) { return pair(exp8(x.lo), exp8(x.hi)); }

/* keys [length][depth] -> keys_t [depth][padded], 8 positions by 8 depths at a time in registers;
 * positions past `length` are 0. */
__attribute__((target("avx2,fma"))) static void NAMED(transpose_keys)(const float *keys, ptrdiff_t length,
                                                                      ptrdiff_t depth, ptrdiff_t padded,
                                                                      float *keys_t) {
    for (ptrdiff_t t0 = 0; t0 < padded; t0 += 8) {
        for (ptrdiff_t d0 = 0; d0 < depth; d0 += 8) {
            const __m256i keep = keep8(depth - d0);
            __m256 r[8], u[8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                r[i] = t0 + i < length ? _mm256_maskload_ps(keys + (t0 + i) * depth + d0, keep) : _mm256_setzero_ps();
            }
#pragma GCC unroll 4
            for (int i = 0; i < 8; i += 2) {
                u[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
                u[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
            }
#pragma GCC unroll 2
            for (int i = 0; i < 8; i += 4) {
                r[i] = _mm256_shuffle_ps(u[i], u[i + 2], 0x44);
                r[i + 1] = _mm256_shuffle_ps(u[i], u[i + 2], 0xEE);
                r[i + 2] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0x44);
                r[i + 3] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0xEE);
            }
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                u[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
                u[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
            }
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                if (d0 + i < depth) {
                    _mm256_storeu_ps(keys_t + (d0 + i) * padded + t0, u[i]);
                }
            }
        }
    }
}

#define V V16_avx2
#define ISA "avx2,fma"
#include "_cross_attention_exact_body.h"
#endif

void cross_attention_exact(int vectors, const float *q, const float *keys, const float *values, const int64_t *mask,
                           ptrdiff_t sentences, ptrdiff_t beams, ptrdiff_t heads, ptrdiff_t depth, ptrdiff_t length,
                           float *out, float *scratch) {
#ifdef EXACT_X86
    if (vectors == EXACT_AVX512) {
        attend_exact_avx512(q, keys, values, mask, sentences, beams, heads, depth, length, out, scratch);
        return;
    }
    if (vectors == EXACT_AVX2) {
        attend_exact_avx2(q, keys, values, mask, sentences, beams, heads, depth, length, out, scratch);
        return;
    }
#endif
    (void)vectors, (void)q, (void)keys, (void)values, (void)mask, (void)sentences, (void)beams, (void)heads;
    (void)depth, (void)length, (void)out, (void)scratch;
}
