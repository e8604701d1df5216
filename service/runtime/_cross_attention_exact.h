/* A decoder step's cross-attention computed as onnxruntime's CPU MultiHeadAttention computes it on an
 * AVX-512 CPU, to the bit (_cross_attention_exact.c). */
#ifndef MTSERVE_CROSS_ATTENTION_EXACT_H
#define MTSERVE_CROSS_ATTENTION_EXACT_H

#include <stddef.h>
#include <stdint.h>

/* cross_attention's kernel argument that picks this kernel (the host's own are 0 to 2). */
#define EXACT_CROSS_KERNEL 3

/* Whether this build and CPU have the kernel (x86-64 with AVX-512F). */
int cross_attention_exact_available(void);

/* The floats of scratch cross_attention_exact needs. */
ptrdiff_t cross_attention_exact_scratch(ptrdiff_t depth, ptrdiff_t length);

/* cross_attention_step's arguments (_attention.h), its scratch cross_attention_exact_scratch floats;
 * only where cross_attention_exact_available(). */
void cross_attention_exact(const float *q, const float *keys, const float *values, const int64_t *mask,
                           ptrdiff_t sentences, ptrdiff_t beams, ptrdiff_t heads, ptrdiff_t depth, ptrdiff_t length,
                           float *out, float *scratch);

#endif
