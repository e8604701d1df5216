/* A decoder step's attention on the host: see _attention.h. onnxruntime's self-attention kernel takes
 * each earlier position of a row with three calls (a dot product, a scale, an add), and its
 * cross-attention a product call per sentence and head for a few rows; here a row's head takes its
 * positions in one pass of vector loops. The self-attention follows the node's order (the new
 * position's value first, then the earlier ones in turn). */
#include "_attention.h"

#include <math.h>

#include "_prefetch.h"
#include "_vector_exp.h"

#ifdef VECTOR_EXP_X86
#define ATTENTION_X86 1
#endif

/* The value onnxruntime's MultiHeadAttention adds to the score of a position its mask leaves out
 * (its mask_filter_value's default). */
#define MASKED_SCORE (-10000.0f)

int float_vectors(void) {
#ifdef ATTENTION_X86
    static int widest = -1; /* the CPU's, found at first use (each step asks) */
    if (widest < 0) {
        __builtin_cpu_init();
        widest = 0;
        if (__builtin_cpu_supports("avx512f")) {
            widest = 2;
        } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            widest = 1;
        }
    }
    return widest;
#else
    return 0;
#endif
}

int attention_kernel(ptrdiff_t depth) {
#ifdef ATTENTION_X86
    const int widest = float_vectors();
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

/* One row and head's attention over `length` positions and, where own_key is set, its own new
 * position after them: out = softmax(query · keys / sqrt(depth) + added) · values. Position t's key is
 * at keys + history[t] * slot_stride + t * depth, its value likewise (a cross-attention's history all
 * 0). */
typedef struct {
    const float *query;                /* with its bias */
    const float *keys, *values;        /* position 0 of the head's first slot */
    const int32_t *history;            /* each position's slot */
    ptrdiff_t slot_stride;             /* floats from one slot to the next, same head */
    const float *own_key, *own_value;  /* the row's new position, or NULL */
    const float *added;                /* each position's addend to its score (a mask's), or NULL */
    ptrdiff_t depth, length;
    float scale;
    float *out, *scores;               /* scores: scratch of length + 1 floats */
} Attend;

static inline const float *position(const float *base, const Attend *a, ptrdiff_t t) {
    return base + a->history[t] * a->slot_stride + t * a->depth;
}

static void attend_plain(const Attend *a) {
    const ptrdiff_t n = a->depth, positions = a->length + (a->own_key != NULL);
    float best = -INFINITY;
    for (ptrdiff_t t = 0; t < positions; t++) {
        const float *key = t < a->length ? position(a->keys, a, t) : a->own_key;
        float sum = 0.0f;
        for (ptrdiff_t d = 0; d < n; d++) {
            sum += a->query[d] * key[d];
        }
        a->scores[t] = sum * a->scale + (a->added ? a->added[t] : 0.0f);
        best = a->scores[t] > best ? a->scores[t] : best;
    }
    float total = 0.0f;
    for (ptrdiff_t t = 0; t < positions; t++) {
        a->scores[t] = expf(a->scores[t] - best);
        total += a->scores[t];
    }
    const float inverse = 1.0f / total;
    for (ptrdiff_t d = 0; d < n; d++) {
        a->out[d] = a->own_value ? a->scores[a->length] * inverse * a->own_value[d] : 0.0f;
    }
    for (ptrdiff_t t = 0; t < a->length; t++) {
        const float *value = position(a->values, a, t);
        const float weight = a->scores[t] * inverse;
        for (ptrdiff_t d = 0; d < n; d++) {
            a->out[d] += weight * value[d];
        }
    }
}

#ifdef ATTENTION_X86
/* exp(scores[t] - best) in place for t < n, in vectors (the last one masked); their sum. */
__attribute__((target("avx512f"))) static float exp_scores_avx512(float *scores, ptrdiff_t n, float best) {
    const __m512 shift = _mm512_set1_ps(best);
    __m512 sum = _mm512_setzero_ps();
    for (ptrdiff_t t = 0; t < n; t += 16) {
        const __mmask16 keep = n - t >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - t)) - 1u);
        const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(keep, scores + t), shift));
        _mm512_mask_storeu_ps(scores + t, keep, e);
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(keep, e));
    }
    return _mm512_reduce_add_ps(sum);
}

__attribute__((target("avx2,fma"))) static float exp_scores_avx2(float *scores, ptrdiff_t n, float best) {
    const __m256 shift = _mm256_set1_ps(best);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 sum = _mm256_setzero_ps();
    for (ptrdiff_t t = 0; t < n; t += 8) {
        const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - t)), lanes);
        const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(scores + t, keep), shift));
        _mm256_maskstore_ps(scores + t, keep, e);
        sum = _mm256_add_ps(sum, _mm256_and_ps(e, _mm256_castsi256_ps(keep)));
    }
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    half = _mm_add_ss(half, _mm_movehdup_ps(half));
    return _mm_cvtss_f32(half);
}

/* out = own_value · own weight + the values weighed by scores[t] · inverse (attend_plain's last
 * loops) with vectors of W floats; `depth` a multiple of W. */
#define WEIGH_VECTORS(NAME, TARGET, VEC, W, LOAD, STORE, MUL, FMA, SET1)                                               \
    __attribute__((target(TARGET))) static inline void NAME(const Attend *a, float inverse) {                          \
        const ptrdiff_t n = a->depth, length = a->length, slot_stride = a->slot_stride;                                \
        const float *values = a->values, *scores = a->scores;                                                          \
        const int32_t *history = a->history;                                                                           \
        const VEC own = SET1(a->own_value ? scores[length] * inverse : 0.0f);                                          \
        const float *own_value = a->own_value ? a->own_value : a->query; /* weighed by 0 where there is none */        \
        ptrdiff_t d = 0;                                                                                               \
        for (; d + 4 * W <= n; d += 4 * W) { /* four vectors of the sum held in registers over the positions */        \
            VEC a0 = MUL(own, LOAD(own_value + d)), a1 = MUL(own, LOAD(own_value + d + W));                            \
            VEC a2 = MUL(own, LOAD(own_value + d + 2 * W)), a3 = MUL(own, LOAD(own_value + d + 3 * W));                \
            for (ptrdiff_t t = 0; t < length; t++) {                                                                   \
                const float *value = values + history[t] * slot_stride + t * n + d;                                    \
                const VEC weight = SET1(scores[t] * inverse);                                                          \
                a0 = FMA(weight, LOAD(value), a0);                                                                     \
                a1 = FMA(weight, LOAD(value + W), a1);                                                                 \
                a2 = FMA(weight, LOAD(value + 2 * W), a2);                                                             \
                a3 = FMA(weight, LOAD(value + 3 * W), a3);                                                             \
            }                                                                                                          \
            STORE(a->out + d, a0);                                                                                     \
            STORE(a->out + d + W, a1);                                                                                 \
            STORE(a->out + d + 2 * W, a2);                                                                             \
            STORE(a->out + d + 3 * W, a3);                                                                             \
        }                                                                                                              \
        for (; d < n; d += W) {                                                                                        \
            VEC acc = MUL(own, LOAD(own_value + d));                                                                   \
            for (ptrdiff_t t = 0; t < length; t++) {                                                                   \
                acc = FMA(SET1(scores[t] * inverse), LOAD(values + history[t] * slot_stride + t * n + d), acc);        \
            }                                                                                                          \
            STORE(a->out + d, acc);                                                                                    \
        }                                                                                                              \
    }

/* The scores of attend_plain with vectors of W floats: LOAD, ADD, MUL, FMA, SET1 and HSUM name W's
 * intrinsics, EXPS the exp of the scores and WEIGH the weighted sum of the values; `depth` a
 * multiple of W. */
#define ATTEND_VECTORS(NAME, TARGET, VEC, W, LOAD, ADD, MUL, FMA, SET1, HSUM, EXPS, WEIGH)                             \
    __attribute__((target(TARGET))) static void NAME(const Attend *a) {                                                \
        const ptrdiff_t n = a->depth, length = a->length, positions = length + (a->own_key != NULL);                   \
        const float *query = a->query, *keys = a->keys, *added = a->added, scale = a->scale;                           \
        const int32_t *history = a->history;                                                                           \
        const ptrdiff_t slot_stride = a->slot_stride;                                                                  \
        float *scores = a->scores;                                                                                     \
        float best = -INFINITY;                                                                                        \
        const int blocked = n % (4 * W) == 0; /* four sums side by side, added at the end */                           \
        const int held = n == 4 * W || n == 8 * W;                                                                     \
        const VEC q0 = held ? LOAD(query) : SET1(0.0f), q1 = held ? LOAD(query + W) : q0;                              \
        const VEC q2 = held ? LOAD(query + 2 * W) : q0, q3 = held ? LOAD(query + 3 * W) : q0;                          \
        const VEC q4 = n == 8 * W ? LOAD(query + 4 * W) : q0, q5 = n == 8 * W ? LOAD(query + 5 * W) : q0;              \
        const VEC q6 = n == 8 * W ? LOAD(query + 6 * W) : q0, q7 = n == 8 * W ? LOAD(query + 7 * W) : q0;              \
        for (ptrdiff_t t = 0; t < positions; t++) {                                                                    \
            const float *key = t < length ? keys + history[t] * slot_stride + t * n : a->own_key;                      \
            VEC sum;                                                                                                   \
            if (n == 4 * W) { /* the usual heads (64 floats with AVX-512): the query held in registers */              \
                sum = ADD(ADD(MUL(q0, LOAD(key)), MUL(q1, LOAD(key + W))),                                             \
                          ADD(MUL(q2, LOAD(key + 2 * W)), MUL(q3, LOAD(key + 3 * W))));                                \
            } else if (n == 8 * W) { /* 128 floats: AVX-512's, or its AVX2 halves' */                                  \
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
            const float score = HSUM(sum) * scale + (added ? added[t] : 0.0f);                                         \
            scores[t] = score;                                                                                         \
            best = score > best ? score : best;                                                                        \
        }                                                                                                              \
        WEIGH(a, 1.0f / EXPS(scores, positions, best));                                                                \
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

/* A self-attention row's head given its biases: the query, and the key and value it writes. */
#define BIASED_VECTORS(NAME, TARGET, W, LOAD, STORE, ADD)                                                              \
    __attribute__((target(TARGET))) static void NAME(const float *q, const float *k, const float *v, const float *bq,  \
                                                     const float *bk, const float *bv, float *query, float *own_key,   \
                                                     float *own_value, ptrdiff_t depth) {                              \
        for (ptrdiff_t d = 0; d < depth; d += W) {                                                                     \
            STORE(query + d, ADD(LOAD(q + d), LOAD(bq + d)));                                                          \
            STORE(own_key + d, ADD(LOAD(k + d), LOAD(bk + d)));                                                        \
            STORE(own_value + d, ADD(LOAD(v + d), LOAD(bv + d)));                                                      \
        }                                                                                                              \
    }
BIASED_VECTORS(biased_avx2, "avx2,fma", 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_add_ps)
BIASED_VECTORS(biased_avx512, "avx512f", 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_add_ps)

WEIGH_VECTORS(weigh_avx2, "avx2,fma", __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_mul_ps, _mm256_fmadd_ps,
              _mm256_set1_ps)
WEIGH_VECTORS(weigh_avx512, "avx512f", __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_mul_ps, _mm512_fmadd_ps,
              _mm512_set1_ps)
ATTEND_VECTORS(attend_avx2, "avx2,fma", __m256, 8, _mm256_loadu_ps, _mm256_add_ps, _mm256_mul_ps, _mm256_fmadd_ps,
               _mm256_set1_ps, hsum_avx2, exp_scores_avx2, weigh_avx2)
ATTEND_VECTORS(attend_avx512, "avx512f", __m512, 16, _mm512_loadu_ps, _mm512_add_ps, _mm512_mul_ps, _mm512_fmadd_ps,
               _mm512_set1_ps, hsum_avx512, exp_scores_avx512, weigh_avx512)

/* AVX-512's kernel in AVX2's vectors: 16 floats as two halves, each lane's arithmetic and the sums'
 * order as attend_avx512's, so that a CPU without AVX-512 attends as one with it does, to the bit
 * (heads of a multiple of 16 floats). */
typedef struct {
    __m256 lo, hi;
} Halves;

__attribute__((target("avx2,fma"), always_inline)) static inline Halves halves(__m256 lo, __m256 hi) {
    Halves h = {lo, hi};
    return h;
}
#define HALVES_OP(NAME, OP)                                                                                            \
    __attribute__((target("avx2,fma"), always_inline)) static inline Halves NAME(Halves a, Halves b) {                 \
        return halves(OP(a.lo, b.lo), OP(a.hi, b.hi));                                                                 \
    }
HALVES_OP(halves_add, _mm256_add_ps)
HALVES_OP(halves_mul, _mm256_mul_ps)
__attribute__((target("avx2,fma"), always_inline)) static inline Halves halves_load(const float *p) {
    return halves(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8));
}
__attribute__((target("avx2,fma"), always_inline)) static inline void halves_store(float *p, Halves x) {
    _mm256_storeu_ps(p, x.lo);
    _mm256_storeu_ps(p + 8, x.hi);
}
__attribute__((target("avx2,fma"), always_inline)) static inline Halves halves_fma(Halves a, Halves b, Halves c) {
    return halves(_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi));
}
__attribute__((target("avx2,fma"), always_inline)) static inline Halves halves_set1(float x) {
    return halves(_mm256_set1_ps(x), _mm256_set1_ps(x));
}

/* _mm512_reduce_add_ps's order: the upper eight lanes plus the lower, then the upper four plus the
 * lower, then lanes 0 + 2 and 1 + 3, then those two. */
__attribute__((target("avx2,fma"))) static inline float hsum_halves(Halves v) {
    const __m256 eight = _mm256_add_ps(v.hi, v.lo);
    const __m128 four = _mm_add_ps(_mm256_extractf128_ps(eight, 1), _mm256_castps256_ps128(eight));
    const __m128 two = _mm_add_ps(four, _mm_shuffle_ps(four, four, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtss_f32(two) + _mm_cvtss_f32(_mm_shuffle_ps(two, two, _MM_SHUFFLE(1, 1, 1, 1)));
}

/* exp_scores_avx512's: position t's exp summed in lane t % 16. */
__attribute__((target("avx2,fma"))) static float exp_scores_halves(float *scores, ptrdiff_t n, float best) {
    const __m256 shift = _mm256_set1_ps(best);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    Halves sum = halves(_mm256_setzero_ps(), _mm256_setzero_ps());
    for (ptrdiff_t t = 0; t < n; t += 16) {
        const __m256i keep_lo = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - t)), lanes);
        const __m256i keep_hi = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - t - 8)), lanes);
        const __m256 lo = exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(scores + t, keep_lo), shift));
        const __m256 hi = exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(scores + t + 8, keep_hi), shift));
        _mm256_maskstore_ps(scores + t, keep_lo, lo);
        _mm256_maskstore_ps(scores + t + 8, keep_hi, hi);
        sum = halves(_mm256_add_ps(sum.lo, _mm256_and_ps(lo, _mm256_castsi256_ps(keep_lo))),
                     _mm256_add_ps(sum.hi, _mm256_and_ps(hi, _mm256_castsi256_ps(keep_hi))));
    }
    return hsum_halves(sum);
}

WEIGH_VECTORS(weigh_halves, "avx2,fma", Halves, 16, halves_load, halves_store, halves_mul, halves_fma, halves_set1)
ATTEND_VECTORS(attend_halves, "avx2,fma", Halves, 16, halves_load, halves_add, halves_mul, halves_fma, halves_set1,
               hsum_halves, exp_scores_halves, weigh_halves)
#endif

static void biased(int kernel, const float *q, const float *k, const float *v, const float *bq, const float *bk,
                   const float *bv, float *query, float *own_key, float *own_value, ptrdiff_t depth) {
#ifdef ATTENTION_X86
    if (kernel == 2) {
        biased_avx512(q, k, v, bq, bk, bv, query, own_key, own_value, depth);
        return;
    }
    if (kernel == 1) {
        biased_avx2(q, k, v, bq, bk, bv, query, own_key, own_value, depth);
        return;
    }
#endif
    for (ptrdiff_t d = 0; d < depth; d++) {
        query[d] = q[d] + bq[d];
        own_key[d] = k[d] + bk[d];
        own_value[d] = v[d] + bv[d];
    }
}

static void attend(int kernel, const Attend *a) {
#ifdef ATTENTION_X86
    if (kernel == 2) {
        attend_avx512(a);
        return;
    }
    if (kernel == 1) {
        if (a->depth % 16 == 0) {
            attend_halves(a); /* as attend_avx512, which an AVX-512 CPU takes for these heads */
        } else {
            attend_avx2(a);
        }
        return;
    }
#endif
    (void)kernel;
    attend_plain(a);
}

/* Asks the cache for a row and head's earlier positions (keys and values), `length` slots named by
 * `history` (_prefetch.h). */
__attribute__((always_inline)) static inline void fetch_positions(const float *keys, const float *values,
                                                                  const int32_t *history, ptrdiff_t slot_stride,
                                                                  ptrdiff_t depth, ptrdiff_t length) {
    for (ptrdiff_t t = 0; t < length; t++) {
        ptrdiff_t slot = history[t] * slot_stride + t * depth;
        fetch_keys_values_into_l2(keys + slot, values + slot, depth);
    }
}

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
    float *query = scratch + length + 1;
    Attend a = {0};
    a.query = query;
    a.depth = depth;
    a.length = length;
    a.scale = 1.0f / sqrtf((float)depth);
    a.slot_stride = heads * head_stride;
    a.scores = scratch;
    for (ptrdiff_t row = 0; row < rows; row++) {
        const ptrdiff_t first = row - row % beams; /* the sentence's first row */
        a.history = indirection + row * capacity;
        for (ptrdiff_t head = 0; head < heads; head++) {
            const ptrdiff_t at = row * width + head * depth;
            const float *bq = bias + head * depth, *bk = bias + width + head * depth;
            const float *bv = bias + 2 * width + head * depth;
            float *own_key = key_cache + (row * heads + head) * head_stride + length * depth;
            float *own_value = value_cache + (row * heads + head) * head_stride + length * depth;
            biased(kernel, q + at, k + at, v + at, bq, bk, bv, query, own_key, own_value, depth);
            a.own_key = own_key;
            a.own_value = own_value;
            a.keys = key_cache + (first * heads + head) * head_stride;
            a.values = value_cache + (first * heads + head) * head_stride;
            a.out = out + at;
            /* The next row and head's positions are fetched while this one is computed (a third off the
             * node's time at 465 rows, docs/BENCHMARKS.md). */
            const ptrdiff_t next = row * heads + head + 1, next_row = next / heads;
            if (next < rows * heads) {
                const ptrdiff_t next_first = (next_row - next_row % beams) * heads + next % heads;
                fetch_positions(key_cache + next_first * head_stride, value_cache + next_first * head_stride,
                                indirection + next_row * capacity, a.slot_stride, depth, length);
            }
            attend(kernel, &a);
        }
    }
    return 0;
}

void cross_attention_step(int kernel, const float *q, const float *keys, const float *values, const int64_t *mask,
                          ptrdiff_t sentences, ptrdiff_t beams, ptrdiff_t heads, ptrdiff_t depth, ptrdiff_t length,
                          float *out, float *scratch, int32_t *history) {
    const ptrdiff_t width = heads * depth;
    float *added = scratch + length;
    for (ptrdiff_t t = 0; t < length; t++) {
        history[t] = 0;
    }
    Attend a = {0};
    a.history = history;
    a.depth = depth;
    a.length = length;
    a.scale = 1.0f / sqrtf((float)depth);
    a.scores = scratch;
    for (ptrdiff_t sentence = 0; sentence < sentences; sentence++) {
        a.added = NULL;
        if (mask) {
            for (ptrdiff_t t = 0; t < length; t++) {
                added[t] = mask[sentence * length + t] == 0 ? MASKED_SCORE : 0.0f;
            }
            a.added = added;
        }
        for (ptrdiff_t head = 0; head < heads; head++) { /* a head's keys and values read by each beam in turn */
            a.keys = keys + (sentence * heads + head) * length * depth;
            a.values = values + (sentence * heads + head) * length * depth;
            if (sentence * heads + head + 1 < sentences * heads) { /* the next head's, which follow */
                fetch_keys_values_into_l2(a.keys + length * depth, a.values + length * depth, length * depth);
            }
            for (ptrdiff_t beam = 0; beam < beams; beam++) {
                const ptrdiff_t at = (sentence * beams + beam) * width + head * depth;
                a.query = q + at;
                a.out = out + at;
                attend(kernel, &a);
            }
        }
    }
}
