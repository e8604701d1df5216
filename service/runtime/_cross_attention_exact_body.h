/* The exact cross-attention's work (_cross_attention_exact.c) over vectors of 16 floats, written once
 * for each way of holding them: included with ISA (the functions' target), NAMED(name) (their names
 * for it), V (the vector type) and these functions of it: v_zero, v_set1, v_load (16 floats),
 * v_load_first(p, n) (the first n, 0 in the other lanes), v_store, v_store_first(p, n, x), v_add, v_sub,
 * v_mul, v_fma(a, b, c) (a * b + c, one rounding), v_max_first(best, n, x) (the maximum in the first
 * n lanes, best's in the others), v_add_first(sum, n, x), v_max_lane (the largest lane),
 * v_mlas_sum (MLAS's reduction of 16 lanes), v_mlas_exp and NAMED(transpose_keys). Each lane's
 * arithmetic is the same whichever holds the vector, so each gives the same bits. Its parameters are
 * undefined at its end. */

/* out[0..depth) = weights · values over `length` positions for a sentence of one row, as MLAS's M = 1
 * kernel (MlasSgemmKernelM1Avx): products rounded, added four positions at a time, each group then
 * added to the running sum. */
__attribute__((target(ISA))) static void NAMED(weigh_one)(const float *weights, const float *values, ptrdiff_t depth,
                                                          ptrdiff_t length, float *out) {
    for (ptrdiff_t d = 0; d < depth; d += 16) {
        const ptrdiff_t keep = depth - d;
        const float *v = values + d;
        V c = v_zero();
        ptrdiff_t t = 0;
        for (; t + 4 <= length; t += 4) {
            V x = v_mul(v_set1(weights[t]), v_load_first(v + t * depth, keep));
            for (ptrdiff_t i = 1; i < 4; i++) {
                x = v_add(x, v_mul(v_set1(weights[t + i]), v_load_first(v + (t + i) * depth, keep)));
            }
            c = v_add(x, c);
        }
        if (length - t >= 2) {
            V x = v_mul(v_set1(weights[t]), v_load_first(v + t * depth, keep));
            x = v_add(x, v_mul(v_set1(weights[t + 1]), v_load_first(v + (t + 1) * depth, keep)));
            c = v_add(x, c);
            t += 2;
        }
        if (length - t == 1) {
            c = v_add(v_mul(v_set1(weights[t]), v_load_first(v + t * depth, keep)), c);
        }
        v_store_first(out + d, keep, c);
    }
}

/* The scores of `rows` rows (at most GROUP) over `length` positions, the positions as a vector's
 * lanes over the head's transposed keys (keys [depth][padded]): each a chain of FMAs over the depth
 * in slices, as MLAS's SGEMM makes it; then fma(sum, alpha, addend) (or sum * alpha). scores:
 * [rows][padded]. */
__attribute__((target(ISA))) static void NAMED(group_scores)(const float *const *query, ptrdiff_t rows,
                                                             const float *keys, const float *added, ptrdiff_t depth,
                                                             ptrdiff_t length, ptrdiff_t padded, ptrdiff_t slice,
                                                             float alpha, float *scores) {
    const V a = v_set1(alpha);
    for (ptrdiff_t t = 0; t < length; t += 16) {
        const V addend = added ? v_load_first(added + t, length - t) : v_zero();
        V c[GROUP];
#pragma GCC unroll 8
        for (int r = 0; r < GROUP; r++) {
            c[r] = addend;
        }
        for (ptrdiff_t d0 = 0; d0 < depth; d0 += slice) {
            const ptrdiff_t d1 = d0 + slice < depth ? d0 + slice : depth;
            V s[GROUP];
#pragma GCC unroll 8
            for (int r = 0; r < GROUP; r++) {
                s[r] = v_zero();
            }
            for (ptrdiff_t d = d0; d < d1; d++) {
                const V kt = v_load(keys + d * padded + t);
#pragma GCC unroll 8
                for (int r = 0; r < GROUP; r++) {
                    if (r < rows) {
                        s[r] = v_fma(v_set1(query[r][d]), kt, s[r]);
                    }
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < GROUP; r++) {
                if (r < rows) {
                    c[r] = added || d0 > 0 ? v_fma(s[r], a, c[r]) : v_mul(s[r], a);
                }
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < GROUP; r++) {
            if (r < rows) {
                v_store(scores + r * padded + t, c[r]);
            }
        }
    }
}

/* scores[0..n) -> their softmax in place, as MlasComputeSoftmax takes a row: the maximum; each exp by
 * MLAS's kernel, position t summed in accumulator lane t % 16, the lanes reduced in its order; each
 * exp times 1 / sum. */
__attribute__((target(ISA))) static void NAMED(row_softmax)(float *scores, ptrdiff_t n) {
    V best = v_set1(-3.402823466e+38f);
    for (ptrdiff_t t = 0; t < n; t += 16) {
        best = v_max_first(best, n - t, v_load(scores + t));
    }
    const V shift = v_set1(-v_max_lane(best));
    V sum = v_zero();
    for (ptrdiff_t t = 0; t < n; t += 16) {
        const V e = v_mlas_exp(v_add(shift, v_load(scores + t)));
        v_store(scores + t, e);
        sum = v_add_first(sum, n - t, e);
    }
    const V scale = v_set1(1.0f / v_mlas_sum(sum));
    for (ptrdiff_t t = 0; t < n; t += 16) {
        v_store(scores + t, v_mul(scale, v_load(scores + t)));
    }
}

/* out[r][0..depth) = weights[r] · values over `length` positions for `rows` rows (at most 4) of a
 * sentence of more than one, as MLAS's SGEMM: each output a chain of FMAs over the positions in
 * slices, each slice's sum added to the last. The rows' chains run side by side. */
__attribute__((target(ISA))) static void NAMED(group_weigh)(const float *weights, ptrdiff_t padded, ptrdiff_t rows,
                                                            const float *values, ptrdiff_t depth, ptrdiff_t length,
                                                            ptrdiff_t slice, float *const *out) {
    for (ptrdiff_t d = 0; d < depth; d += 64) {
        ptrdiff_t keep[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            keep[j] = d + 16 * j < depth ? depth - d - 16 * j : 0;
        }
        V c[WROWS][4];
#pragma GCC unroll 4
        for (int r = 0; r < WROWS; r++) {
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                c[r][j] = v_zero(); /* the first slice's sums replace it */
            }
        }
        for (ptrdiff_t t0 = 0; t0 < length; t0 += slice) {
            const ptrdiff_t t1 = t0 + slice < length ? t0 + slice : length;
            V s[WROWS][4];
#pragma GCC unroll 4
            for (int r = 0; r < WROWS; r++) {
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    s[r][j] = v_zero();
                }
            }
            for (ptrdiff_t t = t0; t < t1; t++) {
                const float *v = values + t * depth + d;
                V x[4];
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    x[j] = v_load_first(v + 16 * j, keep[j]);
                }
#pragma GCC unroll 4
                for (int r = 0; r < WROWS; r++) {
                    if (r < rows) {
                        const V w = v_set1(weights[r * padded + t]);
#pragma GCC unroll 4
                        for (int j = 0; j < 4; j++) {
                            s[r][j] = v_fma(w, x[j], s[r][j]);
                        }
                    }
                }
            }
#pragma GCC unroll 4
            for (int r = 0; r < WROWS; r++) {
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    c[r][j] = t0 == 0 ? s[r][j] : v_add(s[r][j], c[r][j]);
                }
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < WROWS; r++) {
            if (r < rows) {
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    v_store_first(out[r] + d + 16 * j, keep[j], c[r][j]);
                }
            }
        }
    }
}

/* cross_attention_exact's work: each sentence and head in turn, its keys transposed, its rows in
 * groups. */
__attribute__((target(ISA))) static void NAMED(attend_exact)(const float *q, const float *keys, const float *values,
                                                             const int64_t *mask, ptrdiff_t sentences,
                                                             ptrdiff_t beams, ptrdiff_t heads, ptrdiff_t depth,
                                                             ptrdiff_t length, float *out, float *scratch) {
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
                fetch_keys_values_into_l2(k + length * depth, v + length * depth, length * depth);
            }
            NAMED(transpose_keys)(k, length, depth, padded, keys_t);
            for (ptrdiff_t beam = 0; beam < beams; beam += GROUP) {
                const ptrdiff_t rows = beams - beam < GROUP ? beams - beam : GROUP;
                const float *query[GROUP];
                float *outs[GROUP];
                for (ptrdiff_t r = 0; r < rows; r++) {
                    const ptrdiff_t at = (sentence * beams + beam + r) * width + head * depth;
                    query[r] = q + at;
                    outs[r] = out + at;
                }
                NAMED(group_scores)(query, rows, keys_t, added, depth, length, padded, score_slice, alpha, scores);
                for (ptrdiff_t r = 0; r < rows; r++) {
                    NAMED(row_softmax)(scores + r * padded, length);
                }
                if (beams == 1) {
                    NAMED(weigh_one)(scores, v, depth, length, outs[0]);
                } else {
                    for (ptrdiff_t r = 0; r < rows; r += WROWS) {
                        NAMED(group_weigh)(scores + r * padded, padded, rows - r < WROWS ? rows - r : WROWS, v, depth,
                                           length, value_slice, outs + r);
                    }
                }
            }
        }
    }
}

#undef ISA
#undef V
#undef NAMED
