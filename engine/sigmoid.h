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

/* sigmoid() on a vector of 8 lanes (AVX2) or, where the CPU has AVX-512, 16: the same clamp,
 * rounding and polynomial, the exponent built in the float's bits; the same bits per lane at either
 * width. NaN passes through the arithmetic: vmaxps/vminps return their second operand when either
 * is NaN, so the clamp, written constant first, keeps it (a NaN-to-0 mask before the clamp and a
 * blend after cost 4 of ~24 instructions: 1.58 -> 1.40 cycles an element on one Zen 4 core, the
 * same bits on finite inputs). P is the intrinsics' prefix (_mm256_ or _mm512_). */
#define SIGMOID_VECTOR(name, vec, veci, P, round_nearest, as_float)                                  \
    INLINE vec name(vec v) {                                                                         \
        vec x = P##sub_ps(P##setzero_ps(), v);                                                       \
        x = P##min_ps(P##set1_ps(88.f), P##max_ps(P##set1_ps(-87.f), x));                           \
        vec n = round_nearest(P##mul_ps(x, P##set1_ps(1.44269504088896341f)));                       \
        vec r = P##fnmadd_ps(n, P##set1_ps(0.693145751953125f), x);                                  \
        r = P##fnmadd_ps(n, P##set1_ps(1.4286068203e-06f), r);                                       \
        vec p = P##set1_ps(1.f / 5040.f);                                                            \
        p = P##fmadd_ps(p, r, P##set1_ps(1.f / 720.f));                                              \
        p = P##fmadd_ps(p, r, P##set1_ps(1.f / 120.f));                                              \
        p = P##fmadd_ps(p, r, P##set1_ps(1.f / 24.f));                                               \
        p = P##fmadd_ps(p, r, P##set1_ps(1.f / 6.f));                                                \
        p = P##fmadd_ps(p, r, P##set1_ps(0.5f));                                                     \
        p = P##fmadd_ps(p, r, P##set1_ps(1.f));                                                      \
        p = P##fmadd_ps(p, r, P##set1_ps(1.f));                                                      \
        veci e = P##slli_epi32(P##add_epi32(P##cvtps_epi32(n), P##set1_epi32(127)), 23);             \
        return P##div_ps(P##set1_ps(1.f), P##fmadd_ps(p, as_float(e), P##set1_ps(1.f)));             \
    }

INLINE __m256 round8(__m256 x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
SIGMOID_VECTOR(sigmoid8, __m256, __m256i, _mm256_, round8, _mm256_castsi256_ps)

#if defined(__AVX512F__)
/* 16 lanes: on Zen 4, whose 512-bit operations are two 256-bit halves, the same arithmetic in half
 * the instructions ran the depthwise convs' SiLU epilogue 1.1-1.3x faster */
INLINE __m512 round16(__m512 x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
SIGMOID_VECTOR(sigmoid16, __m512, __m512i, _mm512_, round16, _mm512_castsi512_ps)
#endif
#endif

#endif
