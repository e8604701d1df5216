/* A decoder step's self-attention on the host: see _attention.h. onnxruntime's kernel takes each
 * earlier position of a row with three calls (a dot product, a scale, an add); here a row's head
 * takes its positions in one pass of vector loops, and the score, softmax and weighted sum follow
 * the kernel's order (the new position's value first, then the earlier ones in turn). */
#include "_attention.h"

#include <math.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ATTENTION_X86 1
#endif

int attention_kernel(ptrdiff_t depth) {
#ifdef ATTENTION_X86
    static int widest = -1; /* the CPU's, found at first use (each step calls this) */
    if (widest < 0) {
        __builtin_cpu_init();
        widest = 0;
        if (__builtin_cpu_supports("avx512f")) {
            widest = 2;
        } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            widest = 1;
        }
    }
    if (widest >= 2 && depth % 16 == 0) {
        return 2;
    }
    if (widest >= 1 && depth % 8 == 0) {
        return 1;
    }
#endif
    (void)depth;
    return 0;
}

/* Where each row and head reads and writes. */
typedef struct {
    const float *q, *k, *v;          /* the row's head, before its biases */
    const float *bq, *bk, *bv;       /* the head's biases */
    float *own_key, *own_value;      /* the row's slot at position `length` */
    const float *keys, *values;      /* the sentence's first row, this head, position 0 */
    const int32_t *history;          /* the row's indirection: [capacity] */
    ptrdiff_t slot_stride;           /* floats from one beam's row to the next, same head */
    ptrdiff_t depth, length;
    float scale;
    float *out, *scores, *query;     /* query: scratch of `depth` floats */
} Head;

static void head_plain(const Head *h) {
    const ptrdiff_t n = h->depth;
    for (ptrdiff_t d = 0; d < n; d++) {
        h->query[d] = h->q[d] + h->bq[d];
        h->own_key[d] = h->k[d] + h->bk[d];
        h->own_value[d] = h->v[d] + h->bv[d];
    }
    float best = -INFINITY;
    for (ptrdiff_t t = 0; t <= h->length; t++) {
        const float *key = t < h->length ? h->keys + h->history[t] * h->slot_stride + t * n : h->own_key;
        float sum = 0.0f;
        for (ptrdiff_t d = 0; d < n; d++) {
            sum += h->query[d] * key[d];
        }
        h->scores[t] = sum * h->scale;
        best = h->scores[t] > best ? h->scores[t] : best;
    }
    float total = 0.0f;
    for (ptrdiff_t t = 0; t <= h->length; t++) {
        h->scores[t] = expf(h->scores[t] - best);
        total += h->scores[t];
    }
    const float inverse = 1.0f / total;
    const float own = h->scores[h->length] * inverse;
    for (ptrdiff_t d = 0; d < n; d++) {
        h->out[d] = own * h->own_value[d];
    }
    for (ptrdiff_t t = 0; t < h->length; t++) {
        const float *value = h->values + h->history[t] * h->slot_stride + t * n;
        const float weight = h->scores[t] * inverse;
        for (ptrdiff_t d = 0; d < n; d++) {
            h->out[d] += weight * value[d];
        }
    }
}

#ifdef ATTENTION_X86
/* The same with vectors of W floats: LOAD, STORE, ADD, MUL, FMA, SET1 and HSUM name W's
 * intrinsics; `depth` a multiple of W. */
#define HEAD_VECTORS(NAME, TARGET, VEC, W, LOAD, STORE, ADD, MUL, FMA, SET1, HSUM)                                     \
    __attribute__((target(TARGET))) static void NAME(const Head *h) {                                                  \
        const ptrdiff_t n = h->depth, length = h->length, slot_stride = h->slot_stride;                                \
        const float *keys = h->keys, *values = h->values, scale = h->scale;                                            \
        const int32_t *history = h->history;                                                                           \
        float *query = h->query, *scores = h->scores;                                                                  \
        for (ptrdiff_t d = 0; d < n; d += W) {                                                                         \
            STORE(query + d, ADD(LOAD(h->q + d), LOAD(h->bq + d)));                                                    \
            STORE(h->own_key + d, ADD(LOAD(h->k + d), LOAD(h->bk + d)));                                               \
            STORE(h->own_value + d, ADD(LOAD(h->v + d), LOAD(h->bv + d)));                                             \
        }                                                                                                              \
        float best = -INFINITY;                                                                                        \
        const int blocked = n % (4 * W) == 0; /* four sums side by side, added at the end */                           \
        const int held = n == 4 * W || n == 8 * W;                                                                     \
        const VEC q0 = held ? LOAD(query) : SET1(0.0f), q1 = held ? LOAD(query + W) : q0;                              \
        const VEC q2 = held ? LOAD(query + 2 * W) : q0, q3 = held ? LOAD(query + 3 * W) : q0;                          \
        const VEC q4 = n == 8 * W ? LOAD(query + 4 * W) : q0, q5 = n == 8 * W ? LOAD(query + 5 * W) : q0;              \
        const VEC q6 = n == 8 * W ? LOAD(query + 6 * W) : q0, q7 = n == 8 * W ? LOAD(query + 7 * W) : q0;              \
        for (ptrdiff_t t = 0; t <= length; t++) {                                                                      \
            const float *key = t < length ? keys + history[t] * slot_stride + t * n : h->own_key;                      \
            VEC sum;                                                                                                   \
            if (n == 4 * W) { /* the usual heads (64 floats with AVX-512): the query held in registers */              \
                sum = ADD(ADD(MUL(q0, LOAD(key)), MUL(q1, LOAD(key + W))),                                             \
                          ADD(MUL(q2, LOAD(key + 2 * W)), MUL(q3, LOAD(key + 3 * W))));                                \
            } else if (n == 8 * W) { /* 64 floats with AVX2 */                                                         \
                VEC s0 = FMA(q4, LOAD(key + 4 * W), MUL(q0, LOAD(key)));                                               \
                VEC s1 = FMA(q5, LOAD(key + 5 * W), MUL(q1, LOAD(key + W)));                                           \
                VEC s2 = FMA(q6, LOAD(key + 6 * W), MUL(q2, LOAD(key + 2 * W)));                                       \
                VEC s3 = FMA(q7, LOAD(key + 7 * W), MUL(q3, LOAD(key + 3 * W)));                                       \
                sum = ADD(ADD(s0, s1), ADD(s2, s3));                                                                   \
            } else if (blocked) {                                                                                      \
                VEC s0 = MUL(LOAD(query), LOAD(key)), s1 = MUL(LOAD(query + W), LOAD(key + W));                        \
                VEC s2 = MUL(LOAD(query + 2 * W), LOAD(key + 2 * W));                                                  \
                VEC s3 = MUL(LOAD(query + 3 * W), LOAD(key + 3 * W));                                                  \
                for (ptrdiff_t d = 4 * W; d < n; d += 4 * W) {                                                         \
                    s0 = FMA(LOAD(query + d), LOAD(key + d), s0);                                                      \
                    s1 = FMA(LOAD(query + d + W), LOAD(key + d + W), s1);                                              \
                    s2 = FMA(LOAD(query + d + 2 * W), LOAD(key + d + 2 * W), s2);                                      \
                    s3 = FMA(LOAD(query + d + 3 * W), LOAD(key + d + 3 * W), s3);                                      \
                }                                                                                                      \
                sum = ADD(ADD(s0, s1), ADD(s2, s3));                                                                   \
            } else {                                                                                                   \
                sum = MUL(LOAD(query), LOAD(key));                                                                     \
                for (ptrdiff_t d = W; d < n; d += W) {                                                                 \
                    sum = FMA(LOAD(query + d), LOAD(key + d), sum);                                                    \
                }                                                                                                      \
            }                                                                                                          \
            const float score = HSUM(sum) * scale;                                                                     \
            scores[t] = score;                                                                                         \
            best = score > best ? score : best;                                                                        \
        }                                                                                                              \
        float total = 0.0f;                                                                                            \
        for (ptrdiff_t t = 0; t <= length; t++) {                                                                      \
            scores[t] = expf(scores[t] - best);                                                                        \
            total += scores[t];                                                                                        \
        }                                                                                                              \
        const float inverse = 1.0f / total;                                                                            \
        const VEC own = SET1(scores[length] * inverse);                                                                \
        ptrdiff_t d = 0;                                                                                               \
        for (; d + 4 * W <= n; d += 4 * W) { /* four vectors of the sum held in registers over the positions */        \
            VEC a0 = MUL(own, LOAD(h->own_value + d)), a1 = MUL(own, LOAD(h->own_value + d + W));                      \
            VEC a2 = MUL(own, LOAD(h->own_value + d + 2 * W)), a3 = MUL(own, LOAD(h->own_value + d + 3 * W));          \
            for (ptrdiff_t t = 0; t < length; t++) {                                                                   \
                const float *value = values + history[t] * slot_stride + t * n + d;                                    \
                const VEC weight = SET1(scores[t] * inverse);                                                          \
                a0 = FMA(weight, LOAD(value), a0);                                                                     \
                a1 = FMA(weight, LOAD(value + W), a1);                                                                 \
                a2 = FMA(weight, LOAD(value + 2 * W), a2);                                                             \
                a3 = FMA(weight, LOAD(value + 3 * W), a3);                                                             \
            }                                                                                                          \
            STORE(h->out + d, a0);                                                                                     \
            STORE(h->out + d + W, a1);                                                                                 \
            STORE(h->out + d + 2 * W, a2);                                                                             \
            STORE(h->out + d + 3 * W, a3);                                                                             \
        }                                                                                                              \
        for (; d < n; d += W) {                                                                                        \
            VEC acc = MUL(own, LOAD(h->own_value + d));                                                                \
            for (ptrdiff_t t = 0; t < length; t++) {                                                                   \
                const float *value = values + history[t] * slot_stride + t * n + d;                                    \
                acc = FMA(SET1(scores[t] * inverse), LOAD(value), acc);                                                \
            }                                                                                                          \
            STORE(h->out + d, acc);                                                                                    \
        }                                                                                                              \
    }

__attribute__((target("avx2,fma"))) static inline float hsum_avx2(__m256 v) {
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    return _mm_cvtss_f32(sum);
}

__attribute__((target("avx512f"))) static inline float hsum_avx512(__m512 v) {
    return _mm512_reduce_add_ps(v);
}

HEAD_VECTORS(head_avx2, "avx2,fma", __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_add_ps, _mm256_mul_ps,
             _mm256_fmadd_ps, _mm256_set1_ps, hsum_avx2)
HEAD_VECTORS(head_avx512, "avx512f", __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_add_ps, _mm512_mul_ps,
             _mm512_fmadd_ps, _mm512_set1_ps, hsum_avx512)
#endif

int attention_step(int kernel, const float *q, const float *k, const float *v, const float *bias, float *key_cache,
                   float *value_cache, const int32_t *indirection, ptrdiff_t rows, ptrdiff_t heads, ptrdiff_t depth,
                   ptrdiff_t capacity, ptrdiff_t length, ptrdiff_t beams, float *out, float *scratch) {
    for (ptrdiff_t row = 0; row < rows; row++) {
        for (ptrdiff_t t = 0; t < length; t++) {
            const int32_t beam = indirection[row * capacity + t];
            if (beam < 0 || beam >= beams) {
                return -1;
            }
        }
    }
    const ptrdiff_t width = heads * depth, head_stride = capacity * depth;
    Head h;
    h.depth = depth;
    h.length = length;
    h.scale = 1.0f / sqrtf((float)depth);
    h.slot_stride = heads * head_stride;
    h.scores = scratch;
    h.query = scratch + length + 1;
    for (ptrdiff_t row = 0; row < rows; row++) {
        const ptrdiff_t first = row - row % beams; /* the sentence's first row */
        h.history = indirection + row * capacity;
        for (ptrdiff_t head = 0; head < heads; head++) {
            const ptrdiff_t at = row * width + head * depth;
            h.q = q + at, h.k = k + at, h.v = v + at;
            h.bq = bias + head * depth, h.bk = bias + width + head * depth, h.bv = bias + 2 * width + head * depth;
            h.own_key = key_cache + (row * heads + head) * head_stride + length * depth;
            h.own_value = value_cache + (row * heads + head) * head_stride + length * depth;
            h.keys = key_cache + (first * heads + head) * head_stride;
            h.values = value_cache + (first * heads + head) * head_stride;
            h.out = out + at;
#ifdef ATTENTION_X86
            if (kernel == 2) {
                head_avx512(&h);
                continue;
            }
            if (kernel == 1) {
                head_avx2(&h);
                continue;
            }
#endif
            head_plain(&h);
        }
    }
    return 0;
}
