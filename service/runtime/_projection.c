/* A shortlisted step's int8 output projection on the host (_projection.h).
 *
 * The step's MatMulIntegerToFloat reads the batch's union of columns from an input, and onnxruntime
 * packs an input weight at every run (docs/BENCHMARKS.md): for a sentence alone that packing costs
 * more than the product. Here the columns are packed once a batch, in blocks of GROUP columns by
 * DEPTH bytes, the layout VPDPBUSD reads: one 32-bit lane per column, four bytes of the row
 * broadcast against four bytes of each column. AVX2 without VNNI multiplies byte pairs into 16-bit
 * sums first (VPMADDUBSW), which cannot saturate with 7-bit weights (|w| <= 64: 2 * 255 * 64 <
 * 32767); the runtime packs only such weights. The integer sums are exact in every kernel, and the
 * floats are made from them as onnxruntime makes them (the column's scale, then the row's), so the
 * logits are the graph's, bit for bit.
 */
#include "_projection.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PROJECTION_X86 1
#include <immintrin.h>
#endif
#if defined(PROJECTION_X86) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define PROJECTION_AMX 1 /* Linux lends a process AMX's tile state only once asked (arch_prctl) */
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define BLOCK_BYTES (PROJECTION_GROUP * PROJECTION_DEPTH)

static const char *const KERNEL_NAMES[] = {"plain", "avx2", "avx-vnni", "avx512-vnni", "amx"};

const char *projection_kernel_name(int kernel) {
    return kernel >= 0 && kernel <= 4 ? KERNEL_NAMES[kernel] : "unknown";
}

#ifdef PROJECTION_AMX
/* Whether the CPU has AMX's tiles and int8 products, the OS saves their state (XCR0's XTILECFG and
 * XTILEDATA), and Linux grants this process the tile data (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA). */
static int amx_usable(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 25))) {
        return 0;
    }
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) { /* OSXSAVE: XGETBV may run */
        return 0;
    }
    unsigned xcr0_low, xcr0_high;
    __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    (void)xcr0_high;
    if ((xcr0_low & (3u << 17)) != (3u << 17)) {
        return 0;
    }
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}
#endif

int projection_kernel_runs(int kernel) {
#ifdef PROJECTION_X86
    static int runs[5] = {-1, -1, -1, -1, -1};
    if (kernel < 0 || kernel > 4) {
        return 0;
    }
    if (runs[kernel] < 0) {
        __builtin_cpu_init();
        const int avx512_vnni = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vnni");
        switch (kernel) {
        case 0:
            runs[kernel] = 1;
            break;
        case 1:
            runs[kernel] = __builtin_cpu_supports("avx2") != 0;
            break;
        case 2: /* AVX-VNNI is its own feature: an AVX-512 VNNI CPU may lack it (AMD's Zen 4) */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
            runs[kernel] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avxvnni");
#else
            runs[kernel] = 0;
#endif
            break;
        case 3:
            runs[kernel] = avx512_vnni;
            break;
        default:
#ifdef PROJECTION_AMX
            runs[kernel] = avx512_vnni && amx_usable(); /* its rows' post-processing is AVX-512's */
#else
            runs[kernel] = 0;
#endif
        }
    }
    return runs[kernel];
#else
    return kernel == 0;
#endif
}

int projection_kernel(void) {
    static int found = -1;
    if (found < 0) {
        found = 4;
        while (found > 0 && !projection_kernel_runs(found)) {
            found--;
        }
    }
    return found;
}

void projection_pack(const int8_t *weight, ptrdiff_t depth, ptrdiff_t width, int8_t *packed) {
    ptrdiff_t steps = depth / PROJECTION_DEPTH, whole = width / PROJECTION_GROUP;
    ptrdiff_t groups = (width + PROJECTION_GROUP - 1) / PROJECTION_GROUP;
    for (ptrdiff_t g = 0; g < groups; g++) {
        for (ptrdiff_t s = 0; s < steps; s++) {
            const int8_t *from = weight + s * PROJECTION_DEPTH * width + g * PROJECTION_GROUP;
            int8_t *to = packed + (g * steps + s) * BLOCK_BYTES;
#ifdef PROJECTION_X86 /* SSE2: four rows of 16 columns interleaved byte by byte, then pair by pair */
            if (g < whole) {
                __m128i a = _mm_loadu_si128((const __m128i *)from);
                __m128i b = _mm_loadu_si128((const __m128i *)(from + width));
                __m128i c = _mm_loadu_si128((const __m128i *)(from + 2 * width));
                __m128i d = _mm_loadu_si128((const __m128i *)(from + 3 * width));
                __m128i ab_lo = _mm_unpacklo_epi8(a, b), ab_hi = _mm_unpackhi_epi8(a, b);
                __m128i cd_lo = _mm_unpacklo_epi8(c, d), cd_hi = _mm_unpackhi_epi8(c, d);
                _mm_storeu_si128((__m128i *)to, _mm_unpacklo_epi16(ab_lo, cd_lo));
                _mm_storeu_si128((__m128i *)(to + 16), _mm_unpackhi_epi16(ab_lo, cd_lo));
                _mm_storeu_si128((__m128i *)(to + 32), _mm_unpacklo_epi16(ab_hi, cd_hi));
                _mm_storeu_si128((__m128i *)(to + 48), _mm_unpackhi_epi16(ab_hi, cd_hi));
                continue;
            }
#endif
            for (ptrdiff_t t = 0; t < PROJECTION_GROUP; t++) { /* the last group's missing columns are 0 */
                int present = g * PROJECTION_GROUP + t < width;
                for (int i = 0; i < PROJECTION_DEPTH; i++) {
                    to[t * PROJECTION_DEPTH + i] = present ? from[i * width + t] : 0;
                }
            }
        }
    }
}

/* The packed block of column group g at depth step s. */
#define BLOCK(packed, g, s, steps) ((packed) + ((g) * (steps) + (s)) * BLOCK_BYTES)

static void logits_plain(const uint8_t *codes, ptrdiff_t code_stride, const float *row_scale, ptrdiff_t rows,
                         ptrdiff_t depth, const int8_t *packed, const int32_t *col_sums, const float *col_scale,
                         ptrdiff_t width, float *logits, ptrdiff_t logits_stride) {
    ptrdiff_t steps = depth / PROJECTION_DEPTH, groups = width / PROJECTION_GROUP;
    for (ptrdiff_t g = 0; g < groups; g++) {
        for (ptrdiff_t r = 0; r < rows; r++) {
            const uint8_t *a = codes + r * code_stride;
            int32_t sums[PROJECTION_GROUP] = {0};
            for (ptrdiff_t s = 0; s < steps; s++) {
                const int8_t *block = BLOCK(packed, g, s, steps);
                for (int t = 0; t < PROJECTION_GROUP; t++) {
                    for (int i = 0; i < PROJECTION_DEPTH; i++) {
                        sums[t] += (int32_t)a[s * PROJECTION_DEPTH + i] * block[t * PROJECTION_DEPTH + i];
                    }
                }
            }
            for (int t = 0; t < PROJECTION_GROUP; t++) {
                ptrdiff_t c = g * PROJECTION_GROUP + t;
                float value = (float)(sums[t] - PROJECTION_ZERO_POINT * col_sums[c]);
                value = value * col_scale[c];
                logits[r * logits_stride + c] = value * row_scale[r];
            }
        }
    }
}

#ifdef PROJECTION_X86
/* Four bytes of a row, at depth step s, in every 32-bit lane. */
static inline int32_t row_word(const uint8_t *row, ptrdiff_t s) {
    int32_t word;
    memcpy(&word, row + s * PROJECTION_DEPTH, sizeof(word));
    return word;
}

/* The rows in blocks of up to `most` (8 at most), each block by BLOCK(n), n its rows as a constant. */
#define FOR_ROW_BLOCKS(most, BLOCK)                                                                                    \
    for (ptrdiff_t r = 0; r < rows; r += (most)) {                                                                     \
        switch (rows - r < (most) ? rows - r : (most)) {                                                               \
        case 1: BLOCK(1); break;                                                                                       \
        case 2: BLOCK(2); break;                                                                                       \
        case 3: BLOCK(3); break;                                                                                       \
        case 4: BLOCK(4); break;                                                                                       \
        case 5: BLOCK(5); break;                                                                                       \
        case 6: BLOCK(6); break;                                                                                       \
        case 7: BLOCK(7); break;                                                                                       \
        default: BLOCK(8); break;                                                                                      \
        }                                                                                                              \
    }

/* Each kernel takes up to ROWS rows over one column group, each row's sums in registers of their own
 * (named, so that the compiler keeps them there); `n` is a constant at each call. */
#define AVX512_ROWS 8
#define ZMM_DOT(j)                                                                                                     \
    if (n > j) {                                                                                                       \
        sum##j = _mm512_dpbusd_epi32(sum##j, _mm512_set1_epi32(row_word(codes + (j) * code_stride, s)), w);            \
    }
/* 16 columns' logits from their int32 sums: (float(sums - 128 * column sum) * column scale) * row
 * scale, in the order onnxruntime's MatMulIntegerToFloat multiplies them (AVX-512 and AMX kernels). */
__attribute__((target("avx512f"), always_inline)) static inline void
store_logits_zmm(__m512i sums, __m512i zero_sums, __m512 scale, float row_scale, float *out) {
    __m512 value = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums, zero_sums));
    _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_mul_ps(value, scale), _mm512_set1_ps(row_scale)));
}
#define ZMM_OUT(j)                                                                                                     \
    if (n > j) {                                                                                                       \
        store_logits_zmm(sum##j, zero_sums, scale, row_scale[j], logits + (j) * logits_stride + g * PROJECTION_GROUP); \
    }
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline void
group_avx512vnni(int n, const uint8_t *codes, ptrdiff_t code_stride, const float *row_scale, ptrdiff_t steps,
                 const int8_t *packed, ptrdiff_t g, __m512i zero_sums, __m512 scale, float *logits,
                 ptrdiff_t logits_stride) {
    __m512i sum0 = _mm512_setzero_si512(), sum1 = sum0, sum2 = sum0, sum3 = sum0, sum4 = sum0, sum5 = sum0,
            sum6 = sum0, sum7 = sum0;
    for (ptrdiff_t s = 0; s < steps; s++) {
        __m512i w = _mm512_loadu_si512((const void *)BLOCK(packed, g, s, steps));
        ZMM_DOT(0) ZMM_DOT(1) ZMM_DOT(2) ZMM_DOT(3) ZMM_DOT(4) ZMM_DOT(5) ZMM_DOT(6) ZMM_DOT(7)
    }
    ZMM_OUT(0) ZMM_OUT(1) ZMM_OUT(2) ZMM_OUT(3) ZMM_OUT(4) ZMM_OUT(5) ZMM_OUT(6) ZMM_OUT(7)
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
logits_avx512vnni(const uint8_t *codes, ptrdiff_t code_stride, const float *row_scale, ptrdiff_t rows, ptrdiff_t depth,
                  const int8_t *packed, const int32_t *col_sums, const float *col_scale, ptrdiff_t width, float *logits,
                  ptrdiff_t logits_stride) {
    ptrdiff_t steps = depth / PROJECTION_DEPTH, groups = width / PROJECTION_GROUP;
    for (ptrdiff_t g = 0; g < groups; g++) {
        __m512i zero_sums = _mm512_slli_epi32(_mm512_loadu_si512((const void *)(col_sums + g * PROJECTION_GROUP)), 7);
        __m512 scale = _mm512_loadu_ps(col_scale + g * PROJECTION_GROUP);
#define VNNI_BLOCK(n)                                                                                                  \
    group_avx512vnni(n, codes + r * code_stride, code_stride, row_scale + r, steps, packed, g, zero_sums, scale,       \
                     logits + r * logits_stride, logits_stride)
        FOR_ROW_BLOCKS(AVX512_ROWS, VNNI_BLOCK)
#undef VNNI_BLOCK
    }
}

/* 256-bit kernels: a block's two halves (columns 0-7 and 8-15) in two registers; up to 4 rows. */
#define AVX2_ROWS 4
#define HALF(packed, g, s, steps, h) _mm256_loadu_si256((const __m256i *)(BLOCK(packed, g, s, steps) + 32 * (h)))

/* The two halves' sums of row j, by `product` (VNNI's or AVX2's). */
#define YMM_DOT(j, product)                                                                                            \
    if (n > j) {                                                                                                       \
        __m256i a = _mm256_set1_epi32(row_word(codes + (j) * code_stride, s));                                         \
        lo##j = product(lo##j, a, w0);                                                                                 \
        hi##j = product(hi##j, a, w1);                                                                                 \
    }
#define YMM_OUT(j, half, h)                                                                                            \
    if (n > j) {                                                                                                       \
        __m256 value = _mm256_cvtepi32_ps(_mm256_sub_epi32(half##j, zero_sums));                                       \
        value = _mm256_mul_ps(_mm256_mul_ps(value, scale), _mm256_set1_ps(row_scale[j]));                             \
        _mm256_storeu_ps(logits + (j) * logits_stride + g * PROJECTION_GROUP + 8 * (h), value);                        \
    }
#define YMM_GROUP(product)                                                                                             \
    __m256i lo0 = _mm256_setzero_si256(), lo1 = lo0, lo2 = lo0, lo3 = lo0, hi0 = lo0, hi1 = lo0, hi2 = lo0,          \
            hi3 = lo0;                                                                                                 \
    for (ptrdiff_t s = 0; s < steps; s++) {                                                                            \
        __m256i w0 = HALF(packed, g, s, steps, 0), w1 = HALF(packed, g, s, steps, 1);                                  \
        YMM_DOT(0, product) YMM_DOT(1, product) YMM_DOT(2, product) YMM_DOT(3, product)                                \
    }                                                                                                                  \
    for (int h = 0; h < 2; h++) {                                                                                      \
        ptrdiff_t c = g * PROJECTION_GROUP + 8 * h;                                                                    \
        __m256i zero_sums = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(col_sums + c)), 7);                 \
        __m256 scale = _mm256_loadu_ps(col_scale + c);                                                                 \
        if (h == 0) {                                                                                                  \
            YMM_OUT(0, lo, 0) YMM_OUT(1, lo, 0) YMM_OUT(2, lo, 0) YMM_OUT(3, lo, 0)                                    \
        } else {                                                                                                       \
            YMM_OUT(0, hi, 1) YMM_OUT(1, hi, 1) YMM_OUT(2, hi, 1) YMM_OUT(3, hi, 1)                                    \
        }                                                                                                              \
    }

/* A 256-bit kernel's loop over the column groups, AVX2_ROWS rows at a time through `group`. */
#define YMM_LOGITS(group)                                                                                              \
    ptrdiff_t steps = depth / PROJECTION_DEPTH, groups = width / PROJECTION_GROUP;                                     \
    for (ptrdiff_t g = 0; g < groups; g++) {                                                                           \
        for (ptrdiff_t r = 0; r < rows; r += AVX2_ROWS) {                                                              \
            const uint8_t *at = codes + r * code_stride;                                                               \
            const float *scales = row_scale + r;                                                                       \
            float *out = logits + r * logits_stride;                                                                   \
            switch (rows - r < AVX2_ROWS ? rows - r : AVX2_ROWS) {                                                     \
            case 1:                                                                                                    \
                group(1, at, code_stride, scales, steps, packed, g, col_sums, col_scale, out, logits_stride);          \
                break;                                                                                                 \
            case 2:                                                                                                    \
                group(2, at, code_stride, scales, steps, packed, g, col_sums, col_scale, out, logits_stride);          \
                break;                                                                                                 \
            case 3:                                                                                                    \
                group(3, at, code_stride, scales, steps, packed, g, col_sums, col_scale, out, logits_stride);          \
                break;                                                                                                 \
            default:                                                                                                   \
                group(4, at, code_stride, scales, steps, packed, g, col_sums, col_scale, out, logits_stride);          \
            }                                                                                                          \
        }                                                                                                              \
    }

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define VNNI_PRODUCT(sum, a, w) _mm256_dpbusd_avx_epi32(sum, a, w)
__attribute__((target("avx2,avxvnni"), always_inline)) static inline void
group_avxvnni(int n, const uint8_t *codes, ptrdiff_t code_stride, const float *row_scale, ptrdiff_t steps,
              const int8_t *packed, ptrdiff_t g, const int32_t *col_sums, const float *col_scale, float *logits,
              ptrdiff_t logits_stride) {
    YMM_GROUP(VNNI_PRODUCT)
}

__attribute__((target("avx2,avxvnni"))) static void
logits_avxvnni(const uint8_t *codes, ptrdiff_t code_stride, const float *row_scale, ptrdiff_t rows, ptrdiff_t depth,
               const int8_t *packed, const int32_t *col_sums, const float *col_scale, ptrdiff_t width, float *logits,
               ptrdiff_t logits_stride) {
    YMM_LOGITS(group_avxvnni)
}
#endif

/* AVX2 without VNNI: byte pairs into 16-bit sums, then pairs of those into the 32-bit lanes. */
#define AVX2_PRODUCT(sum, a, w) _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(a, w), ones))
__attribute__((target("avx2"), always_inline)) static inline void
group_avx2(int n, const uint8_t *codes, ptrdiff_t code_stride, const float *row_scale, ptrdiff_t steps,
           const int8_t *packed, ptrdiff_t g, const int32_t *col_sums, const float *col_scale, float *logits,
           ptrdiff_t logits_stride) {
    const __m256i ones = _mm256_set1_epi16(1);
    YMM_GROUP(AVX2_PRODUCT)
}

__attribute__((target("avx2"))) static void logits_avx2(const uint8_t *codes, ptrdiff_t code_stride,
                                                        const float *row_scale, ptrdiff_t rows, ptrdiff_t depth,
                                                        const int8_t *packed, const int32_t *col_sums,
                                                        const float *col_scale, ptrdiff_t width, float *logits,
                                                        ptrdiff_t logits_stride) {
    YMM_LOGITS(group_avx2)
}
#endif

#ifdef PROJECTION_AMX
/* AMX: 16 rows by 16 columns of int32 sums a tile, each TDPBUSD taking 64 bytes of depth: the rows' codes
 * as tile A (16 rows of 64 bytes), and a packed group's 16 depth steps as tile B, whose rows of 16
 * columns by 4 bytes are the packed layout as it is. onnxruntime's AMX kernels configure a thread's
 * tiles once and take that configuration as kept between their calls; this kernel runs between the
 * step's runs on the same thread, so it puts back the configuration it found (or releases the tiles
 * where it found none). */
#define AMX_ROWS 16
#define AMX_DEPTH 64                 /* bytes of depth a TDPBUSD takes */
#define AMX_MAX_DEPTH 1024           /* a partial tile's rows are copied, zero-padded, onto the stack */
typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

static int projection_amx_fits(ptrdiff_t depth) { return depth % AMX_DEPTH == 0 && depth <= AMX_MAX_DEPTH; }

/* The sums of a tile (n rows of 16 columns, stride 16) made logits of column group g. */
__attribute__((target("avx512f,avx512bw"), always_inline)) static inline void
amx_out(const int32_t *sums, ptrdiff_t n, const float *row_scale, ptrdiff_t g, const int32_t *col_sums,
        const float *col_scale, float *logits, ptrdiff_t logits_stride) {
    __m512i zero_sums = _mm512_slli_epi32(_mm512_loadu_si512((const void *)(col_sums + g * PROJECTION_GROUP)), 7);
    __m512 scale = _mm512_loadu_ps(col_scale + g * PROJECTION_GROUP);
    for (ptrdiff_t j = 0; j < n; j++) {
        store_logits_zmm(_mm512_loadu_si512((const void *)(sums + j * PROJECTION_GROUP)), zero_sums, scale, row_scale[j],
                         logits + j * logits_stride + g * PROJECTION_GROUP);
    }
}

__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw"))) static void
logits_amx(const uint8_t *codes, ptrdiff_t code_stride, const float *row_scale, ptrdiff_t rows, ptrdiff_t depth,
           const int8_t *packed, const int32_t *col_sums, const float *col_scale, ptrdiff_t width, float *logits,
           ptrdiff_t logits_stride) {
    TileConfig found, config;
    _tile_storeconfig(&found); /* all zero where the tiles are not configured */
    memset(&config, 0, sizeof(config));
    config.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        config.rows[t] = AMX_ROWS;
        config.colsb[t] = 64;
    }
    _tile_loadconfig(&config);
    ptrdiff_t steps = depth / PROJECTION_DEPTH, groups = width / PROJECTION_GROUP, blocks = depth / AMX_DEPTH;
    uint8_t spare[AMX_ROWS * AMX_MAX_DEPTH];
    int32_t sums[2][AMX_ROWS * PROJECTION_GROUP];
    for (ptrdiff_t r = 0; r < rows; r += AMX_ROWS) {
        ptrdiff_t n = rows - r < AMX_ROWS ? rows - r : AMX_ROWS;
        const uint8_t *a = codes + r * code_stride;
        ptrdiff_t a_stride = code_stride;
        if (n < AMX_ROWS) { /* tile A always loads 16 rows */
            memset(spare, 0, (size_t)(AMX_ROWS * depth));
            for (ptrdiff_t j = 0; j < n; j++) {
                memcpy(spare + j * depth, a + j * code_stride, (size_t)depth);
            }
            a = spare;
            a_stride = depth;
        }
        for (ptrdiff_t g = 0; g < groups; g += 2) { /* two groups at a time, on one load of the codes */
            int pair = g + 1 < groups;
            _tile_zero(0);
            _tile_zero(1);
            for (ptrdiff_t b = 0; b < blocks; b++) {
                _tile_loadd(2, a + b * AMX_DEPTH, a_stride);
                _tile_loadd(3, BLOCK(packed, g, b * (AMX_DEPTH / PROJECTION_DEPTH), steps), BLOCK_BYTES);
                _tile_dpbusd(0, 2, 3);
                if (pair) {
                    _tile_loadd(4, BLOCK(packed, g + 1, b * (AMX_DEPTH / PROJECTION_DEPTH), steps), BLOCK_BYTES);
                    _tile_dpbusd(1, 2, 4);
                }
            }
            _tile_stored(0, sums[0], PROJECTION_GROUP * sizeof(int32_t));
            amx_out(sums[0], n, row_scale + r, g, col_sums, col_scale, logits + r * logits_stride, logits_stride);
            if (pair) {
                _tile_stored(1, sums[1], PROJECTION_GROUP * sizeof(int32_t));
                amx_out(sums[1], n, row_scale + r, g + 1, col_sums, col_scale, logits + r * logits_stride,
                        logits_stride);
            }
        }
    }
    if (found.palette_id == 0) {
        _tile_release();
    } else {
        _tile_loadconfig(&found);
    }
}
#endif

/* Float columns (an fp32 step's projection). onnxruntime's fp32 Gemm sums each output over the depth
 * in runs of FLOAT_RUN (its SGEMM's stride in K), each run one chain of fused multiply-adds in depth
 * order, and adds the runs in order; the kernels here do the same, so the logits are the graph's to
 * the bit (tests/test_common_step.py holds them to onnxruntime's). */
#define FLOAT_RUN 128

void projection_pack_float(const float *weight, ptrdiff_t depth, ptrdiff_t width, float *packed) {
    ptrdiff_t groups = (width + PROJECTION_GROUP - 1) / PROJECTION_GROUP;
    for (ptrdiff_t g = 0; g < groups; g++) {
        for (ptrdiff_t t = 0; t < PROJECTION_GROUP; t++) { /* the last group's missing columns are 0 */
            ptrdiff_t c = g * PROJECTION_GROUP + t;
            for (ptrdiff_t d = 0; d < depth; d++) {
                packed[(g * depth + d) * PROJECTION_GROUP + t] = c < width ? weight[c * depth + d] : 0.0f;
            }
        }
    }
}

static void float_logits_plain(const float *rows_in, ptrdiff_t row_stride, ptrdiff_t rows, ptrdiff_t depth,
                               const float *packed, ptrdiff_t width, float *logits, ptrdiff_t logits_stride) {
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *a = rows_in + r * row_stride;
        for (ptrdiff_t c = 0; c < width; c++) {
            const float *w = packed + (c / PROJECTION_GROUP) * depth * PROJECTION_GROUP + c % PROJECTION_GROUP;
            float total = 0.0f, run = 0.0f;
            for (ptrdiff_t d = 0; d < depth; d++) {
                if (d > 0 && d % FLOAT_RUN == 0) {
                    total = d == FLOAT_RUN ? run : total + run;
                    run = 0.0f;
                }
                run = fmaf(a[d], w[d * PROJECTION_GROUP], run);
            }
            logits[r * logits_stride + c] = depth > FLOAT_RUN ? total + run : run;
        }
    }
}

#ifdef PROJECTION_X86
/* AVX-512: up to FLOAT_ROWS rows by two column groups a pass, each row's two sums in registers of its own. */
#define FLOAT_ROWS 8
#define FMA_ROW(j)                                                                                                     \
    if (n > j) {                                                                                                       \
        __m512 x = _mm512_set1_ps(a[(j) * row_stride + d]);                                                            \
        lo##j = _mm512_fmadd_ps(x, w0, lo##j);                                                                         \
        if (two) {                                                                                                     \
            hi##j = _mm512_fmadd_ps(x, w1, hi##j);                                                                     \
        }                                                                                                              \
    }
#define RUN_ENDS(j)                                                                                                    \
    if (n > j) {                                                                                                       \
        done_lo##j = d == FLOAT_RUN ? lo##j : _mm512_add_ps(done_lo##j, lo##j);                                        \
        done_hi##j = d == FLOAT_RUN ? hi##j : _mm512_add_ps(done_hi##j, hi##j);                                        \
        lo##j = hi##j = zero;                                                                                          \
    }
#define FLOAT_OUT(j)                                                                                                   \
    if (n > j) {                                                                                                       \
        float *out = logits + (j) * logits_stride + g * PROJECTION_GROUP;                                              \
        _mm512_storeu_ps(out, depth > FLOAT_RUN ? _mm512_add_ps(done_lo##j, lo##j) : lo##j);                          \
        if (two) {                                                                                                     \
            _mm512_storeu_ps(out + PROJECTION_GROUP, depth > FLOAT_RUN ? _mm512_add_ps(done_hi##j, hi##j) : hi##j);  \
        }                                                                                                              \
    }
#define FOR_ROWS(step) step(0) step(1) step(2) step(3) step(4) step(5) step(6) step(7)
__attribute__((target("avx512f"), always_inline)) static inline void
float_groups_avx512(int n, int two, const float *a, ptrdiff_t row_stride, ptrdiff_t depth, const float *packed,
                    ptrdiff_t g, float *logits, ptrdiff_t logits_stride) {
    const __m512 zero = _mm512_setzero_ps();
    __m512 lo0 = zero, lo1 = zero, lo2 = zero, lo3 = zero, lo4 = zero, lo5 = zero, lo6 = zero, lo7 = zero;
    __m512 hi0 = zero, hi1 = zero, hi2 = zero, hi3 = zero, hi4 = zero, hi5 = zero, hi6 = zero, hi7 = zero;
    __m512 done_lo0 = zero, done_lo1 = zero, done_lo2 = zero, done_lo3 = zero, done_lo4 = zero, done_lo5 = zero,
           done_lo6 = zero, done_lo7 = zero;
    __m512 done_hi0 = zero, done_hi1 = zero, done_hi2 = zero, done_hi3 = zero, done_hi4 = zero, done_hi5 = zero,
           done_hi6 = zero, done_hi7 = zero;
    const float *first = packed + g * depth * PROJECTION_GROUP, *second = first + depth * PROJECTION_GROUP;
    for (ptrdiff_t d = 0; d < depth; d++) {
        if (d > 0 && d % FLOAT_RUN == 0) {
            FOR_ROWS(RUN_ENDS)
        }
        __m512 w0 = _mm512_loadu_ps(first + d * PROJECTION_GROUP);
        __m512 w1 = two ? _mm512_loadu_ps(second + d * PROJECTION_GROUP) : zero;
        FOR_ROWS(FMA_ROW)
    }
    FOR_ROWS(FLOAT_OUT)
}

__attribute__((target("avx512f"))) static void float_logits_avx512(const float *rows_in, ptrdiff_t row_stride,
                                                                     ptrdiff_t rows, ptrdiff_t depth,
                                                                     const float *packed, ptrdiff_t width,
                                                                     float *logits, ptrdiff_t logits_stride) {
    ptrdiff_t groups = width / PROJECTION_GROUP;
    for (ptrdiff_t g = 0; g < groups; g += 2) {
        int two = g + 1 < groups;
#define FLOAT_BLOCK(n)                                                                                                 \
    float_groups_avx512(n, two, rows_in + r * row_stride, row_stride, depth, packed, g, logits + r * logits_stride,    \
                        logits_stride)
        FOR_ROW_BLOCKS(FLOAT_ROWS, FLOAT_BLOCK)
#undef FLOAT_BLOCK
    }
}
#endif

void projection_logits_float(int kernel, const float *rows_in, ptrdiff_t row_stride, ptrdiff_t rows, ptrdiff_t depth,
                             const float *packed, ptrdiff_t width, float *logits, ptrdiff_t logits_stride) {
#ifdef PROJECTION_X86
    if (kernel >= 3) {
        float_logits_avx512(rows_in, row_stride, rows, depth, packed, width, logits, logits_stride);
        return;
    }
#endif
    (void)kernel;
    float_logits_plain(rows_in, row_stride, rows, depth, packed, width, logits, logits_stride);
}

void projection_logits(int kernel, const uint8_t *codes, ptrdiff_t code_stride, const float *row_scale, ptrdiff_t rows,
                       ptrdiff_t depth, const int8_t *packed, const int32_t *col_sums, const float *col_scale,
                       ptrdiff_t width, float *logits, ptrdiff_t logits_stride) {
    switch (kernel) {
#ifdef PROJECTION_X86
#ifdef PROJECTION_AMX
    case 4:
        if (projection_amx_fits(depth)) {
            logits_amx(codes, code_stride, row_scale, rows, depth, packed, col_sums, col_scale, width, logits,
                       logits_stride);
            return;
        }
        __attribute__((fallthrough)); /* to AVX-512 VNNI, which every AMX CPU has */
#endif
    case 3:
        logits_avx512vnni(codes, code_stride, row_scale, rows, depth, packed, col_sums, col_scale, width, logits,
                          logits_stride);
        return;
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
    case 2:
        logits_avxvnni(codes, code_stride, row_scale, rows, depth, packed, col_sums, col_scale, width, logits,
                       logits_stride);
        return;
#endif
    case 1:
        logits_avx2(codes, code_stride, row_scale, rows, depth, packed, col_sums, col_scale, width, logits,
                    logits_stride);
        return;
#endif
    default:
        logits_plain(codes, code_stride, row_scale, rows, depth, packed, col_sums, col_scale, width, logits,
                     logits_stride);
    }
}
