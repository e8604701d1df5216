/* exp over a vector of floats as Cephes' expf computes it: the argument held above -87, reduced by
 * ln 2 in two parts, a degree-5 polynomial, 2^n put into the exponent. Shared by the log-softmax's
 * normaliser (_common_step.c) and the attention kernels' softmax (_attention.c). */
#ifndef MTSERVE_VECTOR_EXP_H
#define MTSERVE_VECTOR_EXP_H

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define VECTOR_EXP_X86 1

/* `name`(x) for the instruction sets `isa` (P: the intrinsics' prefix, V and VI: the float and int
 * vector types; ROUND rounds to the nearest integer, CAST reinterprets ints as floats). */
#define VECTOR_EXP(name, isa, P, V, VI, ROUND, CAST)                                                                  \
    __attribute__((target(isa))) static inline V name(V x) {                                                           \
        const V log2e = P##_set1_ps(1.44269504088896341f), ln2_hi = P##_set1_ps(0.693359375f);                        \
        const V ln2_lo = P##_set1_ps(-2.12194440e-4f), one = P##_set1_ps(1.0f);                                        \
        x = P##_max_ps(x, P##_set1_ps(-87.0f));                                                                        \
        const V n = ROUND(P##_mul_ps(x, log2e));                                                                       \
        const V r = P##_fnmadd_ps(n, ln2_lo, P##_fnmadd_ps(n, ln2_hi, x));                                             \
        V p = P##_fmadd_ps(P##_set1_ps(1.9875691500e-4f), r, P##_set1_ps(1.3981999507e-3f));                           \
        p = P##_fmadd_ps(p, r, P##_set1_ps(8.3334519073e-3f));                                                         \
        p = P##_fmadd_ps(p, r, P##_set1_ps(4.1665795894e-2f));                                                         \
        p = P##_fmadd_ps(p, r, P##_set1_ps(1.6666665459e-1f));                                                         \
        p = P##_fmadd_ps(p, r, P##_set1_ps(5.0000001201e-1f));                                                         \
        p = P##_fmadd_ps(P##_mul_ps(p, r), r, P##_add_ps(r, one));                                                     \
        const VI e = P##_slli_epi32(P##_add_epi32(P##_cvtps_epi32(n), P##_set1_epi32(127)), 23);                       \
        return P##_mul_ps(p, CAST(e));                                                                                 \
    }
#define VECTOR_EXP_ROUND_YMM(x) _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define VECTOR_EXP_ROUND_ZMM(x) _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
VECTOR_EXP(exp_avx2, "avx2,fma", _mm256, __m256, __m256i, VECTOR_EXP_ROUND_YMM, _mm256_castsi256_ps)
VECTOR_EXP(exp_avx512, "avx512f", _mm512, __m512, __m512i, VECTOR_EXP_ROUND_ZMM, _mm512_castsi512_ps)
#endif

#endif
