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
    static int available = -1;
    if (available < 0) {
        __builtin_cpu_init();
        available = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return available;
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
/* exp(x) as MlasComputeSumExpF32KernelAvx512F computes it (MlasExpConstants). */
__attribute__((target("avx512f"))) static inline __m512 mlas_exp(__m512 x) {
    const __m512 bias = _mm512_set1_ps(12582912.0f); /* MLAS_ROUNDING_BIAS_MAGIC */
    x = _mm512_max_ps(_mm512_set1_ps(-103.9720840454f), x);
    __m512 m = _mm512_fmadd_ps(_mm512_set1_ps(1.44269504088896341f), x, bias);
    m = _mm512_sub_ps(m, bias);
    x = _mm512_fmadd_ps(m, _mm512_set1_ps(-6.93145752e-1f), x);
    x = _mm512_fmadd_ps(m, _mm512_set1_ps(-1.42860677e-6f), x);
    __m512 p = _mm512_set1_ps(0x1.694000p-10f);
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(0x1.125edcp-7f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(0x1.555b5ap-5f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(0x1.555450p-3f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(0x1.fffff6p-2f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, m);
}

static inline __mmask16 first(ptrdiff_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}

/* out[0..depth) = weights · values over `length` positions for a sentence of one row, as MLAS's M = 1
 * kernel (MlasSgemmKernelM1Avx): products rounded, added four positions at a time, each group then
 * added to the running sum. */
__attribute__((target("avx512f"))) static void weigh_one(const float *weights, const float *values, ptrdiff_t depth,
                                                         ptrdiff_t length, float *out) {
    for (ptrdiff_t d = 0; d < depth; d += 16) {
        const __mmask16 keep = first(depth - d);
        const float *v = values + d;
        __m512 c = _mm512_setzero_ps();
        ptrdiff_t t = 0;
        for (; t + 4 <= length; t += 4) {
            __m512 x = _mm512_mul_ps(_mm512_set1_ps(weights[t]), _mm512_maskz_loadu_ps(keep, v + t * depth));
            for (ptrdiff_t i = 1; i < 4; i++) {
                x = _mm512_add_ps(x, _mm512_mul_ps(_mm512_set1_ps(weights[(t + i)]),
                                                   _mm512_maskz_loadu_ps(keep, v + (t + i) * depth)));
            }
            c = _mm512_add_ps(x, c);
        }
        if (length - t >= 2) {
            __m512 x = _mm512_mul_ps(_mm512_set1_ps(weights[t]), _mm512_maskz_loadu_ps(keep, v + t * depth));
            x = _mm512_add_ps(x, _mm512_mul_ps(_mm512_set1_ps(weights[(t + 1)]),
                                               _mm512_maskz_loadu_ps(keep, v + (t + 1) * depth)));
            c = _mm512_add_ps(x, c);
            t += 2;
        }
        if (length - t == 1) {
            c = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(weights[t]), _mm512_maskz_loadu_ps(keep, v + t * depth)),
                              c);
        }
        _mm512_mask_storeu_ps(out + d, keep, c);
    }
}/* keys [length][depth] -> keys_t [depth][padded], 16 positions by 16 depths at a time in registers;
 * positions past `length` are 0. */
__attribute__((target("avx512f"))) static void transpose_keys(const float *keys, ptrdiff_t length, ptrdiff_t depth,
                                                              ptrdiff_t padded, float *keys_t) {
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

/* The scores of `rows` rows (at most GROUP) over `length` positions, the positions as a vector's
 * lanes over the head's transposed keys (keys [depth][padded]): each a chain of FMAs over the depth
 * in slices, as MLAS's SGEMM makes it; then fma(sum, alpha, addend) (or sum * alpha). scores:
 * [rows][padded]. */
__attribute__((target("avx512f"))) static void group_scores(const float *const *query, ptrdiff_t rows,
                                                            const float *keys, const float *added, ptrdiff_t depth,
                                                            ptrdiff_t length, ptrdiff_t padded, ptrdiff_t slice,
                                                            float alpha, float *scores) {
    const __m512 a = _mm512_set1_ps(alpha);
    for (ptrdiff_t t = 0; t < length; t += 16) {
        const __mmask16 keep = first(length - t);
        const __m512 addend = added ? _mm512_maskz_loadu_ps(keep, added + t) : _mm512_setzero_ps();
        __m512 c[GROUP];
#pragma GCC unroll 8
        for (int r = 0; r < GROUP; r++) {
            c[r] = addend;
        }
        for (ptrdiff_t d0 = 0; d0 < depth; d0 += slice) {
            const ptrdiff_t d1 = d0 + slice < depth ? d0 + slice : depth;
            __m512 s[GROUP];
#pragma GCC unroll 8
            for (int r = 0; r < GROUP; r++) {
                s[r] = _mm512_setzero_ps();
            }
            for (ptrdiff_t d = d0; d < d1; d++) {
                const __m512 kt = _mm512_loadu_ps(keys + d * padded + t);
#pragma GCC unroll 8
                for (int r = 0; r < GROUP; r++) {
                    if (r < rows) {
                        s[r] = _mm512_fmadd_ps(_mm512_set1_ps(query[r][d]), kt, s[r]);
                    }
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < GROUP; r++) {
                if (r < rows) {
                    c[r] = added || d0 > 0 ? _mm512_fmadd_ps(s[r], a, c[r]) : _mm512_mul_ps(s[r], a);
                }
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < GROUP; r++) {
            if (r < rows) {
                _mm512_storeu_ps(scores + r * padded + t, c[r]);
            }
        }
    }
}

/* scores[0..n) -> their softmax in place, as MlasComputeSoftmax takes a row: the maximum; each exp by
 * MLAS's kernel, position t summed in accumulator lane t % 16, the lanes reduced in its order; each
 * exp times 1 / sum. */
__attribute__((target("avx512f"))) static void row_softmax(float *scores, ptrdiff_t n) {
    __m512 best = _mm512_set1_ps(-3.402823466e+38f);
    for (ptrdiff_t t = 0; t < n; t += 16) {
        best = _mm512_mask_max_ps(best, first(n - t), best, _mm512_loadu_ps(scores + t));
    }
    const __m512 shift = _mm512_set1_ps(-_mm512_reduce_max_ps(best));
    __m512 sum = _mm512_setzero_ps();
    for (ptrdiff_t t = 0; t < n; t += 16) {
        const __m512 e = mlas_exp(_mm512_add_ps(shift, _mm512_loadu_ps(scores + t)));
        _mm512_storeu_ps(scores + t, e);
        sum = _mm512_mask_add_ps(sum, first(n - t), sum, e);
    }
    const __m256 upper = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sum), 1));
    const __m256 h = _mm256_add_ps(upper, _mm512_castps512_ps256(sum)); /* lane i + 8 plus lane i */
    const __m128 p = _mm_hadd_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)); /* h0+h1 .. h6+h7 */
    const float total = (p[0] + p[1]) + (p[2] + p[3]);
    const __m512 scale = _mm512_set1_ps(1.0f / total);
    for (ptrdiff_t t = 0; t < n; t += 16) {
        _mm512_storeu_ps(scores + t, _mm512_mul_ps(scale, _mm512_loadu_ps(scores + t)));
    }
}

/* out[r][0..depth) = weights[r] · values over `length` positions for `rows` rows (at most 4) of a
 * sentence of more than one, as MLAS's SGEMM: each output a chain of FMAs over the positions in
 * slices, each slice's sum added to the last. The rows' chains run side by side. */
__attribute__((target("avx512f"))) static void group_weigh(const float *weights, ptrdiff_t padded, ptrdiff_t rows,
                                                           const float *values, ptrdiff_t depth, ptrdiff_t length,
                                                           ptrdiff_t slice, float *const *out) {
    for (ptrdiff_t d = 0; d < depth; d += 64) {
        __mmask16 keep[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            keep[j] = d + 16 * j < depth ? first(depth - d - 16 * j) : (__mmask16)0;
        }
        __m512 c[WROWS][4];
#pragma GCC unroll 4
        for (int r = 0; r < WROWS; r++) {
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                c[r][j] = _mm512_setzero_ps(); /* the first slice's sums replace it */
            }
        }
        for (ptrdiff_t t0 = 0; t0 < length; t0 += slice) {
            const ptrdiff_t t1 = t0 + slice < length ? t0 + slice : length;
            __m512 s[WROWS][4];
#pragma GCC unroll 4
            for (int r = 0; r < WROWS; r++) {
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    s[r][j] = _mm512_setzero_ps();
                }
            }
            for (ptrdiff_t t = t0; t < t1; t++) {
                const float *v = values + t * depth + d;
                __m512 x[4];
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    x[j] = _mm512_maskz_loadu_ps(keep[j], v + 16 * j);
                }
#pragma GCC unroll 4
                for (int r = 0; r < WROWS; r++) {
                    if (r < rows) {
                        const __m512 w = _mm512_set1_ps(weights[r * padded + t]);
#pragma GCC unroll 4
                        for (int j = 0; j < 4; j++) {
                            s[r][j] = _mm512_fmadd_ps(w, x[j], s[r][j]);
                        }
                    }
                }
            }
#pragma GCC unroll 4
            for (int r = 0; r < WROWS; r++) {
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    c[r][j] = t0 == 0 ? s[r][j] : _mm512_add_ps(s[r][j], c[r][j]);
                }
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < WROWS; r++) {
            if (r < rows) {
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    _mm512_mask_storeu_ps(out[r] + d + 16 * j, keep[j], c[r][j]);
                }
            }
        }
    }
}

/* cross_attention_exact's work: each sentence and head in turn, its keys transposed, its rows in
 * groups. */
__attribute__((target("avx512f"))) static void attend_exact(const float *q, const float *keys, const float *values,
                                                            const int64_t *mask, ptrdiff_t sentences, ptrdiff_t beams,
                                                            ptrdiff_t heads, ptrdiff_t depth, ptrdiff_t length,
                                                            float *out, float *scratch) {
    const ptrdiff_t width = heads * depth, padded = (length + 15) / 16 * 16;
    const float alpha = 1.0f / __builtin_sqrtf((float)depth);
    const ptrdiff_t score_slice = stride_k(length, depth), value_slice = stride_k(depth, length);
    float *keys_t = scratch, *scores = keys_t + depth * padded, *added = mask ? scores + GROUP * padded : NULL;
    for (ptrdiff_t sentence = 0; sentence < sentences; sentence++) {
        for (ptrdiff_t t = 0; added && t < length; t++) {
            added[t] = mask[sentence * length + t] == 0 ? MASKED_SCORE : 0.0f;
        }
        for (ptrdiff_t head = 0; head < heads; head++) {
            const float *k = keys + (sentence * heads + head) * length * depth;
            const float *v = values + (sentence * heads + head) * length * depth;
            if (sentence * heads + head + 1 < sentences * heads) { /* the next head's, while this one is computed */
                const char *next_keys = (const char *)(k + length * depth);
                const char *next_values = (const char *)(v + length * depth);
                for (ptrdiff_t byte = 0; byte < length * depth * (ptrdiff_t)sizeof(float); byte += 64) {
                    __builtin_prefetch(next_keys + byte);
                    __builtin_prefetch(next_values + byte);
                }
            }
            transpose_keys(k, length, depth, padded, keys_t);
            for (ptrdiff_t beam = 0; beam < beams; beam += GROUP) {
                const ptrdiff_t rows = beams - beam < GROUP ? beams - beam : GROUP;
                const float *query[GROUP];
                float *outs[GROUP];
                for (ptrdiff_t r = 0; r < rows; r++) {
                    const ptrdiff_t at = (sentence * beams + beam + r) * width + head * depth;
                    query[r] = q + at;
                    outs[r] = out + at;
                }
                group_scores(query, rows, keys_t, added, depth, length, padded, score_slice, alpha, scores);
                for (ptrdiff_t r = 0; r < rows; r++) {
                    row_softmax(scores + r * padded, length);
                }
                if (beams == 1) {
                    weigh_one(scores, v, depth, length, outs[0]);
                } else {
                    for (ptrdiff_t r = 0; r < rows; r += WROWS) {
                        group_weigh(scores + r * padded, padded, rows - r < WROWS ? rows - r : WROWS, v, depth, length,
                                    value_slice, outs + r);
                    }
                }
            }
        }
    }
}
#endif

void cross_attention_exact(const float *q, const float *keys, const float *values, const int64_t *mask,
                           ptrdiff_t sentences, ptrdiff_t beams, ptrdiff_t heads, ptrdiff_t depth, ptrdiff_t length,
                           float *out, float *scratch) {
#ifdef EXACT_X86
    attend_exact(q, keys, values, mask, sentences, beams, heads, depth, length, out, scratch);
#else
    (void)q, (void)keys, (void)values, (void)mask, (void)sentences, (void)beams, (void)heads, (void)depth;
    (void)length, (void)out, (void)scratch;
#endif
}
