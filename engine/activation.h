/* The activation epilogues of the C kernels (pointwise.c, depthwise.c), one code table for all:
 * engine/depthwise.py ACTIVATIONS holds the same codes. Included by each source; native.py hashes
 * it with the source that includes it. */
#ifndef FERFUSE_ACTIVATION_H
#define FERFUSE_ACTIVATION_H

#ifndef INLINE
#define INLINE static inline __attribute__((always_inline))
#endif

#include "sigmoid.h"

enum { ACT_NONE = 0, ACT_SILU = 1, ACT_HARD_SWISH = 2, ACT_RELU = 3 };

/* MHAN's h_swish: x relu6(x + 3) / 6, divided as upstream divides (not multiplied by 1/6) */
INLINE float hard_swish(float v) {
    float r = v + 3.f;
    r = r < 0.f ? 0.f : (r > 6.f ? 6.f : r);
    return v * (r / 6.f);
}

INLINE float activate(float v, int act) {
    switch (act) {
    case ACT_SILU: return v * sigmoid(v);
    case ACT_HARD_SWISH: return hard_swish(v);
    case ACT_RELU: return v < 0.f ? 0.f : v;  /* NaN stays NaN, as torch.relu */
    default: return v;
    }
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* activate() on 8 lanes (sigmoid8: sigmoid.h); NaN propagates alike. */
INLINE __m256 activate8(__m256 v, int act) {
    switch (act) {
    case ACT_SILU: return _mm256_mul_ps(v, sigmoid8(v));
    case ACT_HARD_SWISH: {
        __m256 r = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, _mm256_set1_ps(3.f)), _mm256_setzero_ps()),
                                 _mm256_set1_ps(6.f));
        return _mm256_mul_ps(v, _mm256_div_ps(r, _mm256_set1_ps(6.f)));
    }
    case ACT_RELU: return _mm256_max_ps(_mm256_setzero_ps(), v);  /* max(0, NaN) is the NaN, as torch.relu */
    default: return v;
    }
}

#if defined(__AVX512F__)
/* SiLU on 16 lanes (sigmoid16), the same bits as activate8's on each 8; the other activations are
 * a few instructions and stay on 8 lanes (no gain was measured for them) */
INLINE __m512 silu16(__m512 v) { return _mm512_mul_ps(v, sigmoid16(v)); }
INLINE __m256 low8(__m512 v) { return _mm512_castps512_ps256(v); }
INLINE __m256 high8(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }
INLINE __m512 join16(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}
#endif
#endif

#endif
