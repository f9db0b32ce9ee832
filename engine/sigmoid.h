/* The logistic sigmoid of the C kernels (depthwise.c's gates and SiLU, pointwise.c's SiLU
 * epilogue), written once so every kernel rounds it alike. Included by each source; native.py
 * hashes it with the source that includes it. */
#ifndef FERFUSE_SIGMOID_H
#define FERFUSE_SIGMOID_H

#include <math.h>
#include <stdint.h>

#ifndef INLINE
#define INLINE static inline __attribute__((always_inline))
#endif

/* The sigmoid in a form the compiler vectorises (glibc's expf is a scalar call, and with ~60 000
 * gates per block at batch 8 it was half of coordinate attention's time): e^-v = 2^n e^r with
 * n = round(-v / ln 2), |r| <= ln(2)/2 and e^r its degree-7 Taylor polynomial (truncation < 2e-9,
 * so the result is within a few ulp of expf). -v is clamped to [-87, 88], where the sigmoid is 0
 * or 1 to float precision; NaN passes through. */
INLINE float sigmoid(float v) {
    float x = -v;
    x = x == x ? x : 0.f;
    x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = (x - n * 0.693145751953125f) - n * 1.4286068203e-06f;  /* ln 2 in two parts */
    float p = 1.f / 5040.f;
    p = p * r + 1.f / 720.f;
    p = p * r + 1.f / 120.f;
    p = p * r + 1.f / 24.f;
    p = p * r + 1.f / 6.f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) << 23};
    float result = 1.f / (1.f + p * scale.f);
    return v == v ? result : v;
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* sigmoid() on 8 lanes: the same clamp, rounding and polynomial, the exponent built in the
 * float's bits. NaN passes through the arithmetic: vmaxps/vminps return their second operand
 * when either is NaN, so the clamp, written constant first, keeps it (a NaN-to-0 mask before the
 * clamp and a blend after cost 4 of ~24 instructions: 1.58 -> 1.40 cycles an element on one Zen 4
 * core, the same bits on finite inputs). */
INLINE __m256 sigmoid8(__m256 v) {
    __m256 x = _mm256_sub_ps(_mm256_setzero_ps(), v);
    x = _mm256_min_ps(_mm256_set1_ps(88.f), _mm256_max_ps(_mm256_set1_ps(-87.f), x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.4286068203e-06f), r);
    __m256 p = _mm256_set1_ps(1.f / 5040.f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 720.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_fmadd_ps(p, _mm256_castsi256_ps(e), _mm256_set1_ps(1.f)));
}
#endif

#endif
