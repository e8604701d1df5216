/* A decoder step's attention on the host (_attention.c): what onnxruntime's
 * DecoderMaskedMultiHeadAttention computes over a shared past/present cache read through the beam
 * indirection, and its MultiHeadAttention over each sentence's encoder keys and values, with vector
 * loops over each row's positions where its kernels make a call per position or per sentence and
 * head (docs/BENCHMARKS.md). */
#ifndef MTSERVE_ATTENTION_H
#define MTSERVE_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

/* The widest float vectors the CPU runs, found once: 2 AVX-512, 1 AVX2 with FMA, 0 neither (also the
 * log-softmax's, _common_step.c). */
int float_vectors(void);

/* The widest kernel for heads of `depth` floats: 0 plain C, 1 AVX2 with FMA (depth a multiple of 8),
 * 2 AVX-512 (a multiple of 16). */
int attention_kernel(ptrdiff_t depth);

/* One layer's attention for one step of `rows` rows, `beams` to a sentence:
 *   q, k, v [rows, heads * depth]: the step's query, key and value before their biases;
 *   bias [3 * heads * depth]: the query's, the key's and the value's, in that order;
 *   key_cache, value_cache [rows, heads, capacity, depth]: each row's own key and value are written
 *     at position `length`; earlier positions are read from the slot that indirection names;
 *   indirection [rows / beams, beams, capacity] int32: for each row and earlier position, the beam of
 *     its sentence whose row holds it (checked: -1 is returned, nothing written, where one is out of
 *     range);
 *   out [rows, heads * depth]: softmax(q · keys / sqrt(depth)) · values, per head;
 *   scratch: length + 1 + depth floats.
 * Each row and head is computed alone, in the same order whatever the rows beside it. */
int attention_step(int kernel, const float *q, const float *k, const float *v, const float *bias, float *key_cache,
                   float *value_cache, const int32_t *indirection, ptrdiff_t rows, ptrdiff_t heads, ptrdiff_t depth,
                   ptrdiff_t capacity, ptrdiff_t length, ptrdiff_t beams, float *out, float *scratch);

/* One layer's cross-attention for one step of `sentences` * `beams` rows:
 *   q [sentences * beams, heads * depth]: the step's query, with its bias;
 *   keys, values [sentences, heads, length, depth]: each sentence's encoder keys and values;
 *   mask [sentences, length] or NULL: a position whose mask is 0 is left out, as onnxruntime's
 *     MultiHeadAttention leaves it (its score lowered by 10,000);
 *   out [sentences * beams, heads * depth]: softmax(q · keys / sqrt(depth) + mask) · values, per head;
 *   scratch: 2 * length floats; history: length int32s of scratch.
 * Each row and head is computed alone, in the same order whatever the rows beside it. */
void cross_attention_step(int kernel, const float *q, const float *keys, const float *values, const int64_t *mask,
                          ptrdiff_t sentences, ptrdiff_t beams, ptrdiff_t heads, ptrdiff_t depth, ptrdiff_t length,
                          float *out, float *scratch, int32_t *history);

#endif
