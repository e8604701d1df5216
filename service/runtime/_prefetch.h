/* Asking memory ahead for what a kernel reads next: a large batch's cache (the self-attention's
 * slots, the cross-attention's sources) does not fit the CPU's caches, and its spans jump where the
 * hardware's prefetcher does not follow. Each request goes into the core's L2 cache only
 * (PREFETCHT2): a burst of them into L1 waits there for L1's few miss buffers and holds the
 * kernel's own loads behind it, where L2 has more (docs/BENCHMARKS.md). */
#ifndef MTSERVE_PREFETCH_H
#define MTSERVE_PREFETCH_H

#include <stddef.h>
#include <stdint.h>

#define CACHE_LINE 64

/* Every cache line of the `bytes` from `start` on. Always inlined: GCC takes a function that does
 * nothing but prefetch for one without effects and drops its calls. */
__attribute__((always_inline)) static inline void fetch_into_l2(const void *start, ptrdiff_t bytes) {
    const char *line = (const char *)((uintptr_t)start & ~(uintptr_t)(CACHE_LINE - 1));
    for (const char *end = (const char *)start + bytes; line < end; line += CACHE_LINE) {
        __builtin_prefetch(line, 0, 1); /* read, locality 1: PREFETCHT2 on x86 */
    }
}

/* A head's keys and its values, the same `floats` of each from `keys` and `values` on. */
__attribute__((always_inline)) static inline void fetch_keys_values_into_l2(const float *keys, const float *values,
                                                                            ptrdiff_t floats) {
    fetch_into_l2(keys, floats * (ptrdiff_t)sizeof(float));
    fetch_into_l2(values, floats * (ptrdiff_t)sizeof(float));
}

#endif
