/* A decoder step's cross-attention computed as onnxruntime's CPU MultiHeadAttention computes it on an
 * AVX-512 CPU, to the bit (_cross_attention_exact.c), with AVX-512 or, on a CPU without it, AVX2. */
#ifndef MTSERVE_CROSS_ATTENTION_EXACT_H
#define MTSERVE_CROSS_ATTENTION_EXACT_H

#include <stddef.h>
#include <stdint.h>

/* cross_attention's kernel arguments that pick this kernel (the host's own are 0 to 2): on the widest
 * vectors the CPU has, or on AVX2's (the same bits; tests). */
#define EXACT_CROSS_KERNEL 3
#define EXACT_CROSS_KERNEL_AVX2 4

/* The vectors it is computed in. */
#define EXACT_AVX2 1
#define EXACT_AVX512 2

/* The widest vectors this build and CPU compute it in: EXACT_AVX512, EXACT_AVX2 (AVX2 with FMA), or 0
 * where it has neither (or is not x86-64). */
int cross_attention_exact_available(void);

/* The floats of scratch cross_attention_exact needs. */
ptrdiff_t cross_attention_exact_scratch(ptrdiff_t depth, ptrdiff_t length);

/* cross_attention_step's arguments (_attention.h), its scratch cross_attention_exact_scratch floats, in
 * `vectors` (EXACT_AVX512 or EXACT_AVX2, at most cross_attention_exact_available()). */
void cross_attention_exact(int vectors, const float *q, const float *keys, const float *values, const int64_t *mask,
                           ptrdiff_t sentences, ptrdiff_t beams, ptrdiff_t heads, ptrdiff_t depth, ptrdiff_t length,
                           float *out, float *scratch);

#endif
