/* A shortlisted step's int8 output projection on the host (_projection.c): the union's columns packed
 * once a batch, then each step's rows multiplied by them, as the step's MatMulIntegerToFloat would. */
#ifndef MTSERVE_PROJECTION_H
#define MTSERVE_PROJECTION_H

#include <stddef.h>
#include <stdint.h>

#define PROJECTION_GROUP 16 /* columns a packed block holds: a 512-bit register of int32 sums */
#define PROJECTION_DEPTH 4  /* bytes of a column a block holds together: what one VPDPBUSD lane sums */
#define PROJECTION_ZERO_POINT 128 /* the activation codes' zero point (export/quantize.py, per row) */

/* The widest kernel the CPU runs: 0 plain C, 1 AVX2, 2 AVX-VNNI, 3 AVX-512 VNNI, 4 AMX (with AVX-512
 * VNNI for a depth that is not a multiple of 64 or is above 1,024). */
int projection_kernel(void);
/* Whether `kernel` runs on this CPU: a narrower kernel than the widest need not (AVX-VNNI beside AVX-512
 * VNNI). */
int projection_kernel_runs(int kernel);
const char *projection_kernel_name(int kernel);

/* weight [depth, width] int8, row-major (the step's layout), into packed [groups][depth / DEPTH][GROUP]
 * [DEPTH], groups = width / GROUP rounded up (the last group's missing columns 0); depth a multiple of
 * DEPTH. */
void projection_pack(const int8_t *weight, ptrdiff_t depth, ptrdiff_t width, int8_t *packed);

/* logits [rows, width] (row stride logits_stride floats; width a multiple of GROUP, packed's) = (float(sum_d (codes[r, d] - ZERO_POINT) *
 * weight[d, c]) * col_scale[c]) * row_scale[r]: MatMulIntegerToFloat's result, bit for bit, over the
 * packed columns, col_sums [width] their sums over d; with `kernel`, one that runs here (projection_kernel_runs). */
void projection_logits(int kernel, const uint8_t *codes, ptrdiff_t code_stride, const float *row_scale, ptrdiff_t rows,
                       ptrdiff_t depth, const int8_t *packed, const int32_t *col_sums, const float *col_scale,
                       ptrdiff_t width, float *logits, ptrdiff_t logits_stride);

/* An fp32 step's columns: weight [width, depth] float32 (the step's rows of the union) into packed
 * [groups][depth][GROUP]; and logits [rows, width] (width a multiple of GROUP) = rows_in [rows, depth]
 * times them, as onnxruntime's fp32 Gemm sums them, bit for bit: AVX-512 for kernel 3 and above, else
 * plain C. */
void projection_pack_float(const float *weight, ptrdiff_t depth, ptrdiff_t width, float *packed);
void projection_logits_float(int kernel, const float *rows_in, ptrdiff_t row_stride, ptrdiff_t rows, ptrdiff_t depth,
                             const float *packed, ptrdiff_t width, float *logits, ptrdiff_t logits_stride);

#endif
