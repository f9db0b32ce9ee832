/* Depthwise convolution and the attention gate after it, for the mobile blocks of FER trunks:
 * MHAN's Mix_Depth_Wise (1x1 expand + PReLU, mixed depthwise conv, coordinate attention, 1x1
 * project) and EfficientNet's MBConv in HAFEM (1x1 expand + SiLU, depthwise conv + SiLU,
 * squeeze-and-excitation, 1x1 project). The 1x1 convolutions are GEMMs (pointwise.c or oneDNN);
 * what is left between them is ~10-25 small torch ops per block, so it runs here as two passes
 * over channels-last maps. On AVX2 the depthwise conv is register-blocked (depthwise_block; 16
 * channels a register with AVX-512), and EfficientNet's runs here or on oneDNN, whichever its first
 * call at a shape timed faster.
 *
 * Layouts (all channels-last, float32):
 *   x: B x H x W x C            the depthwise conv's input
 *   w: K x K x C                every channel's kernel, zero-padded to the largest size K and
 *                               centred (a k x k kernel with padding k/2 is the K x K kernel with
 *                               padding K/2 whose outer ring is zero); only its k x k taps are read
 *   y: B x Ho x Wo x C
 * Channels are contiguous, so every inner loop runs over channels and the compiler vectorises it.
 * No -ffast-math: NaN and Inf propagate as IEEE arithmetic makes them. */
#include <math.h>
#include <stdint.h>

#define INLINE static inline __attribute__((always_inline))

#include "activation.h" /* the ACT_* codes, activate() and activate8(), shared with pointwise.c */

#define L 16 /* channels per accumulator block: two AVX2 or one AVX-512 vector of floats */


/* One output pixel's `lanes` channels from c: the k x k taps of its group that fall inside the
 * map, summed in registers (acc), then stored once. Called with lanes == L (a constant the compiler
 * unrolls) or with the group's last, shorter block. */
INLINE void depthwise_pixel(const float *restrict xb, const float *restrict w, const float *restrict bias,
                            float *restrict out, int H, int W, int C, int K, int k, int iy0, int ix0, int c,
                            int lanes) {
    float acc[L];
    int off = (K - k) / 2;
    for (int l = 0; l < lanes; l++) acc[l] = bias ? bias[c + l] : 0.f;
    for (int ky = 0; ky < k; ky++) {
        int iy = iy0 + ky;
        if (iy < 0 || iy >= H) continue;
        for (int kx = 0; kx < k; kx++) {
            int ix = ix0 + kx;
            if (ix < 0 || ix >= W) continue;
            const float *restrict src = xb + ((int64_t)iy * W + ix) * C + c;
            const float *restrict tap = w + ((int64_t)(ky + off) * K + kx + off) * C + c;
            for (int l = 0; l < lanes; l++) acc[l] += src[l] * tap[l];
        }
    }
    for (int l = 0; l < lanes; l++) out[c + l] = acc[l];
}

/* P horizontally adjacent output pixels whose windows lie inside the map's width: each tap's
 * weights are loaded once for the P pixels (a direct depthwise conv is bound by loads, not FMAs). */
#define P 4
INLINE void depthwise_pixels(const float *restrict xb, const float *restrict w, const float *restrict bias,
                             float *restrict out, int H, int W, int C, int K, int k, int iy0, int ix0, int stride,
                             int c, int lanes) {
    float acc[P][L];
    int off = (K - k) / 2;
    for (int p = 0; p < P; p++)
        for (int l = 0; l < lanes; l++) acc[p][l] = bias ? bias[c + l] : 0.f;
    for (int ky = 0; ky < k; ky++) {
        int iy = iy0 + ky;
        if (iy < 0 || iy >= H) continue;
        for (int kx = 0; kx < k; kx++) {
            const float *restrict src = xb + ((int64_t)iy * W + ix0 + kx) * C + c;
            const float *restrict tap = w + ((int64_t)(ky + off) * K + kx + off) * C + c;
            for (int p = 0; p < P; p++)
                for (int l = 0; l < lanes; l++) acc[p][l] += src[(int64_t)p * stride * C + l] * tap[l];
        }
    }
    for (int p = 0; p < P; p++)
        for (int l = 0; l < lanes; l++) out[(int64_t)p * C + c + l] = acc[p][l];
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HAVE_BLOCKS 1

/* PX output pixels of one row and one vector of channels from c, register-blocked: PX accumulators,
 * the row's k taps held in registers for a kernel row, and each input pixel of the window loaded
 * once and multiplied into every output pixel whose window holds it (a stride-1 k=5 row: 12 loads
 * for 40 multiply-adds, where loading per tap is 80). k, s and checked are compile-time constants
 * at every call, so the loops unroll to straight-line code with the tap index resolved. checked:
 * the block has np < PX pixels or its windows cross the map's left or right edge (those taps are
 * skipped). Written once for two widths: 8 channels (AVX2) and, where the CPU has AVX-512, 16 in
 * one register, the same taps, order and rounding per lane with half the instructions: on the
 * 2-core Zen 4, whose 512-bit FMA is two 256-bit halves, the loop's loads, address arithmetic and
 * branches bound the blocks, and 16 channels at a time ran B5's depthwise convs with their SiLU
 * 1.11-1.24x faster (the 24-channel ones level), the same bits; with the SiLU on 16 lanes too
 * (activation.h silu16) 1.10-1.32x faster again. */
#define PX 8
#define DEPTHWISE_BLOCK(name, vec, load, fmadd, zero, store)                                                  \
    INLINE void name(const float *restrict xb, const float *restrict w, const float *restrict bias,          \
                     float *restrict out, int H, int W, int C, int K, const int k, const int s,              \
                     const int checked, int np, int iy0, int ix0, int c, int act) {                          \
        vec acc[PX];                                                                                         \
        vec b = bias ? load(bias + c) : zero();                                                              \
        _Pragma("GCC unroll 8") for (int p = 0; p < PX; p++) acc[p] = b;                                     \
        const int off = (K - k) / 2, span = (PX - 1) * s + k;                                                \
        for (int ky = 0; ky < k; ky++) {                                                                     \
            int iy = iy0 + ky;                                                                               \
            if (iy < 0 || iy >= H) continue;                                                                 \
            const float *restrict wr = w + ((int64_t)(ky + off) * K + off) * C + c;                          \
            vec tap[7];                                                                                      \
            _Pragma("GCC unroll 7") for (int kx = 0; kx < k; kx++) tap[kx] = load(wr + (int64_t)kx * C);     \
            const float *restrict xr = xb + ((int64_t)iy * W + ix0) * C + c;                                 \
            _Pragma("GCC unroll 32") for (int j = 0; j < span; j++) {                                        \
                if (checked && (j >= (np - 1) * s + k || ix0 + j < 0 || ix0 + j >= W)) continue;             \
                vec v = load(xr + (int64_t)j * C);                                                           \
                _Pragma("GCC unroll 8") for (int p = 0; p < PX; p++) {                                       \
                    int kx = j - p * s;                                                                      \
                    if (kx >= 0 && kx < k && (!checked || p < np)) acc[p] = fmadd(v, tap[kx], acc[p]);      \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        _Pragma("GCC unroll 8") for (int p = 0; p < PX; p++)                                                 \
            if (!checked || p < np) store(out + (int64_t)p * C + c, acc[p], act);                            \
    }

INLINE void store8(float *out, __m256 v, int act) { _mm256_storeu_ps(out, activate8(v, act)); }
DEPTHWISE_BLOCK(depthwise_block, __m256, _mm256_loadu_ps, _mm256_fmadd_ps, _mm256_setzero_ps, store8)

#if defined(__AVX512F__)
#define HAVE_BLOCKS16 1
INLINE void store16(float *out, __m512 v, int act) {
    if (act == ACT_SILU) {
        _mm512_storeu_ps(out, silu16(v));
    } else {
        store8(out, low8(v), act);
        store8(out + 8, high8(v), act);
    }
}
DEPTHWISE_BLOCK(depthwise_block16, __m512, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_setzero_ps, store16)
#endif

/* The blocks of one run of PX pixels from channel c: 16 channels at a time with AVX-512, then 8;
 * returns the first channel left (fewer than 8). Inlined at both calls with checked a constant,
 * so each call unrolls as depthwise_block's loops need. */
INLINE int depthwise_blocks(const float *xb, const float *w, const float *bias, float *out, int H, int W, int C,
                            int K, const int k, const int s, const int checked, int np, int iy0, int ix0, int c,
                            int c1, int act) {
#ifdef HAVE_BLOCKS16
    for (; c + 16 <= c1; c += 16) depthwise_block16(xb, w, bias, out, H, W, C, K, k, s, checked, np, iy0, ix0, c, act);
#endif
    for (; c + 8 <= c1; c += 8) depthwise_block(xb, w, bias, out, H, W, C, K, k, s, checked, np, iy0, ix0, c, act);
    return c;
}

/* One output row's pixels [0, Wo) and channels [c0, c1) of a group with kernel k (3, 5 or 7) and
 * stride s (1 or 2): blocks of PX pixels (depthwise_blocks), unchecked where the PX windows lie
 * inside the width; the last < 8 channels per pixel. */
INLINE void depthwise_row_const(const float *xb, const float *w, const float *bias, float *yrow, int H, int W,
                                int C, int Wo, int K, const int k, const int s, int iy0, int c0, int c1, int act) {
    for (int ox = 0; ox < Wo; ox += PX) {
        int ix0 = ox * s - k / 2, np = Wo - ox < PX ? Wo - ox : PX;
        float *out = yrow + (int64_t)ox * C;
        int c = np == PX && ix0 >= 0 && ix0 + (PX - 1) * s + k <= W
                    ? depthwise_blocks(xb, w, bias, out, H, W, C, K, k, s, 0, PX, iy0, ix0, c0, c1, act)
                    : depthwise_blocks(xb, w, bias, out, H, W, C, K, k, s, 1, np, iy0, ix0, c0, c1, act);
        for (int p = 0; c < c1 && p < np; p++) {
            depthwise_pixel(xb, w, bias, out + (int64_t)p * C, H, W, C, K, k, iy0, ix0 + p * s, c, c1 - c);
            for (int l = c; l < c1; l++) out[(int64_t)p * C + l] = activate(out[(int64_t)p * C + l], act);
        }
    }
}

/* The row on the blocked path where k and s have one (returns 1), else 0. */
static int depthwise_row_blocked(const float *xb, const float *w, const float *bias, float *yrow, int H, int W,
                                 int C, int Wo, int K, int k, int s, int iy0, int c0, int c1, int act) {
#define ROW(kk, ss) depthwise_row_const(xb, w, bias, yrow, H, W, C, Wo, K, kk, ss, iy0, c0, c1, act); return 1;
    switch (k * 4 + s) {
    case 3 * 4 + 1: ROW(3, 1)
    case 3 * 4 + 2: ROW(3, 2)
    case 5 * 4 + 1: ROW(5, 1)
    case 5 * 4 + 2: ROW(5, 2)
    case 7 * 4 + 1: ROW(7, 1)
    case 7 * 4 + 2: ROW(7, 2)
    default: return 0;
    }
#undef ROW
}
#else
static int depthwise_row_blocked(const float *xb, const float *w, const float *bias, float *yrow, int H, int W,
                                 int C, int Wo, int K, int k, int s, int iy0, int c0, int c1, int act) {
    return 0;  /* no AVX2 + FMA: every row on the generic loops below */
}
#endif

/* The generic row: groups of P pixels where their windows lie inside the width, else one pixel. */
static void depthwise_row(const float *xb, const float *w, const float *bias, float *yrow, int H, int W, int C,
                          int Wo, int K, int k, int stride, int iy0, int c0, int c1, int act) {
    for (int ox = 0; ox < Wo; ox++) {
        int ix0 = ox * stride - k / 2;
        float *out = yrow + (int64_t)ox * C;
        int c = c0, n = 1;
        if (ix0 >= 0 && ox + P <= Wo && ix0 + (P - 1) * stride + k <= W) {  /* P pixels, no column padding */
            for (; c + L <= c1; c += L) depthwise_pixels(xb, w, bias, out, H, W, C, K, k, iy0, ix0, stride, c, L);
            if (c < c1) depthwise_pixels(xb, w, bias, out, H, W, C, K, k, iy0, ix0, stride, c, c1 - c);
            n = P;
        } else {
            for (; c + L <= c1; c += L) depthwise_pixel(xb, w, bias, out, H, W, C, K, k, iy0, ix0, c, L);
            if (c < c1) depthwise_pixel(xb, w, bias, out, H, W, C, K, k, iy0, ix0, c, c1 - c);
        }
        if (act)
            for (int p = 0; p < n; p++)
                for (int c = c0; c < c1; c++) out[(int64_t)p * C + c] = activate(out[(int64_t)p * C + c], act);
        ox += n - 1;
    }
}

/* Channels per work unit: a unit's input window (k rows of PX + k - 1 pixels) stays in L1. */
#define CHUNK 64

/* y = act(dwconv(prelu(x)) + bias). Channel groups [start[g], start[g+1]) use kernel size ksize[g]
 * (odd, <= K), padding ksize[g]/2, stride `stride`. prelu (C slopes) may be NULL: no activation;
 * then x is only read. With prelu, x is overwritten by prelu(x) first (it is the caller's scratch).
 * act: ACT_* code of the epilogue, 0 for none. Threads share (output row, 64-channel chunk) units,
 * so a 7x7 map at batch 1 still splits evenly. */
void mixed_depthwise(float *x, const float *w, const float *bias, const float *prelu, float *y, int B, int H,
                     int W, int C, int Ho, int Wo, int stride, int K, int groups, const int *start,
                     const int *ksize, int act, int threads) {
    if (prelu) {
        int64_t pixels = (int64_t)B * H * W;
        _Pragma("omp parallel for num_threads(threads) schedule(static)")
        for (int64_t p = 0; p < pixels; p++) {
            float *restrict row = x + p * C;
            for (int c = 0; c < C; c++) {  /* both sides computed: a select the compiler vectorises */
                float v = row[c], scaled = prelu[c] * v;
                row[c] = v > 0.f ? v : scaled;
            }
        }
    }
    int chunks = (C + CHUNK - 1) / CHUNK;
    int64_t units = (int64_t)B * Ho * chunks;
    _Pragma("omp parallel for num_threads(threads) schedule(static)")
    for (int64_t u = 0; u < units; u++) {
        int64_t r = u / chunks;
        int b = (int)(r / Ho), oy = (int)(r % Ho), lo = (int)(u % chunks) * CHUNK, hi = lo + CHUNK < C ? lo + CHUNK : C;
        const float *xb = x + (int64_t)b * H * W * C;
        float *yrow = y + r * Wo * C;
        for (int g = 0; g < groups; g++) {
            int k = ksize[g], c0 = start[g] > lo ? start[g] : lo, c1 = start[g + 1] < hi ? start[g + 1] : hi;
            if (c0 >= c1) continue;
            int iy0 = oy * stride - k / 2;
            if (!depthwise_row_blocked(xb, w, bias, yrow, H, W, C, Wo, K, k, stride, iy0, c0, c1, act))
                depthwise_row(xb, w, bias, yrow, H, W, C, Wo, K, k, stride, iy0, c0, c1, act);
        }
    }
}

/* w . m + bias over C channels in L partial sums, one per lane, added at the end: a single running
 * sum is a chain of C dependent adds, which IEEE order (no -ffast-math) forbids the compiler to split. */
INLINE float dot(const float *w, const float *m, int C, float bias) {
    float part[L] = {0.f}, s = bias;
    int c = 0;
    for (; c + L <= C; c += L)
        for (int l = 0; l < L; l++) part[l] += w[c + l] * m[c + l];
    for (; c < C; c++) s += w[c] * m[c];
    for (int l = 0; l < L; l++) s += part[l];
    return s;
}

/* A gate's output layer on channels [c0, c1): a[c] = sigmoid(b2_scale b2[c] + sum_j w2t[j][c] z[j]),
 * summed in order of j, so a gate split across threads by channel ranges rounds as a whole one. */
INLINE void gate_output(const float *z, float *a, int C, int hidden, const float *w2t, const float *b2,
                        float b2_scale, int c0, int c1) {
    for (int c = c0; c < c1; c++) a[c] = b2_scale * b2[c];
    for (int j = 0; j < hidden; j++) {
        const float *wj = w2t + (int64_t)j * C;
        for (int c = c0; c < c1; c++) a[c] += wj[c] * z[j];
    }
    for (int c = c0; c < c1; c++) a[c] = sigmoid(a[c]);
}

/* One gate: a = sigmoid(w2t^T act(w1 m + b1) + b2), m and a of C channels (a may be m: m is read
 * whole before a is written). w1: hidden x C (row per hidden unit), w2t: hidden x C (transposed,
 * so the last loops run over channels). */
static void gate_mlp(const float *m, float *a, int C, int hidden, const float *w1, const float *b1,
                     const float *w2t, const float *b2, int act, float *z) {
    for (int j = 0; j < hidden; j++) z[j] = activate(dot(w1 + (int64_t)j * C, m, C, b1[j]), act);
    gate_output(z, a, C, hidden, w2t, b2, 1.f, 0, C);
}

/* Coordinate attention (Hou et al., CVPR 2021) applied in place: m_h = mean over W, m_w = mean
 * over H; both go through the shared 1x1 conv with its BatchNorm folded (w1, b1) and h-swish; then
 * a_h = sigmoid(conv2(.)), a_w = sigmoid(conv3(.)); y = y * a_w * a_h (upstream's order).
 * scratch: B*(H+W)*C floats (the means, then the gates in their place). */
void coordinate_attention(float *y, int B, int H, int W, int C, int mip, const float *w1, const float *b1,
                          const float *w2t, const float *b2, const float *w3t, const float *b3, float *scratch,
                          int threads) {
    float *gates = scratch;  /* B x (H + W) x C: rows 0..H-1 hold m_h then a_h, rows H.. m_w then a_w */
    int64_t positions = (int64_t)B * (H + W);
    _Pragma("omp parallel for num_threads(threads) schedule(static)")
    for (int64_t p = 0; p < positions; p++) {  /* the means: a row of y, or a column */
        int b = (int)(p / (H + W)), i = (int)(p % (H + W));
        float *m = gates + p * C;
        const float *yb = y + (int64_t)b * H * W * C;
        for (int c = 0; c < C; c++) m[c] = 0.f;
        if (i < H) {
            for (int x = 0; x < W; x++)
                for (int c = 0; c < C; c++) m[c] += yb[((int64_t)i * W + x) * C + c];
            for (int c = 0; c < C; c++) m[c] /= (float)W;
        } else {
            for (int r = 0; r < H; r++)
                for (int c = 0; c < C; c++) m[c] += yb[((int64_t)r * W + i - H) * C + c];
            for (int c = 0; c < C; c++) m[c] /= (float)H;
        }
    }
    _Pragma("omp parallel for num_threads(threads) schedule(static)")
    for (int64_t p = 0; p < positions; p++) {  /* each mean becomes its gate: read whole, then written */
        int i = (int)(p % (H + W));
        float *m = gates + p * C, z[mip];
        if (i < H) gate_mlp(m, m, C, mip, w1, b1, w2t, b2, ACT_HARD_SWISH, z);
        else gate_mlp(m, m, C, mip, w1, b1, w3t, b3, ACT_HARD_SWISH, z);
    }
    int64_t rows = (int64_t)B * H;
    _Pragma("omp parallel for num_threads(threads) schedule(static)")
    for (int64_t r = 0; r < rows; r++) {
        int b = (int)(r / H), i = (int)(r % H);
        const float *ah = gates + ((int64_t)b * (H + W) + i) * C;
        for (int x = 0; x < W; x++) {
            const float *aw = gates + ((int64_t)b * (H + W) + H + x) * C;
            float *out = y + (r * W + x) * C;
            for (int c = 0; c < C; c++) out[c] = out[c] * aw[c] * ah[c];
        }
    }
}

/* Squeeze-and-excitation (Hu et al., CVPR 2018) applied in place, as EfficientNet's MBConv has it:
 * s = sigmoid(w2 act(w1 GAP(y) + b1) + b2) per sample, y = y * s.
 * One parallel region with three loops (a fork-join per loop, three per block, cost more than the
 * block's own work on 7x7 maps at batch 1). The GAP splits each sample's pixels into `chunks`
 * ranges, each summed into its own partial sums: at batch 1 a 112x112 map of 24 channels is two
 * 16-channel blocks, which split by channels alone left one of two threads idle. The MLP runs one
 * sample per thread where there are as many samples as threads; with fewer (batch 1) each sample's
 * MLP is split across them, in gate_mlp's order of summation: its weights (1.1 MB in each of
 * EfficientNet-B5's 7x7 blocks, 3 MB in the last two) come from DRAM on every forward, and split
 * they stream into both cores (HAFEM at batch 1 on the 2-core AVX2 EPYC: ~0.5 ms a forward less;
 * on warm weights in isolation the split had measured slower).
 * scratch: B*chunks*C floats (the partial sums; then each sample's first row holds its gate). */
void squeeze_excite(float *y, int B, int HW, int C, int hidden, const float *w1, const float *b1, const float *w2t,
                    const float *b2, int act, float *scratch, int chunks, int threads) {
    int64_t pixels = (int64_t)B * HW;
    float z[hidden];  /* the hidden layer, shared where one sample's MLP is split across threads */
    _Pragma("omp parallel num_threads(threads)")
    {
        _Pragma("omp for schedule(static)")
        for (int64_t t = 0; t < (int64_t)B * chunks; t++) {  /* partial sums of one pixel range */
            int b = (int)(t / chunks), part = (int)(t % chunks);
            int64_t p0 = (int64_t)HW * part / chunks, p1 = (int64_t)HW * (part + 1) / chunks;
            float *restrict sum = scratch + t * C;
            const float *yb = y + (int64_t)b * HW * C;
            for (int c0 = 0; c0 < C; c0 += L) {  /* L channels summed in registers down the pixels */
                float acc[L] = {0.f};
                if (c0 + L <= C) {
                    for (int64_t p = p0; p < p1; p++)
                        for (int l = 0; l < L; l++) acc[l] += yb[p * C + c0 + l];
                } else {
                    for (int64_t p = p0; p < p1; p++)
                        for (int l = 0; l < C - c0; l++) acc[l] += yb[p * C + c0 + l];
                }
                for (int l = 0; l < L && c0 + l < C; l++) sum[c0 + l] = acc[l];
            }
        }
        if (B >= threads) {
            _Pragma("omp for schedule(static)")
            for (int b = 0; b < B; b++) {  /* the mean, then the gate, in the sample's first partial row */
                float *m = scratch + (int64_t)b * chunks * C, z[hidden];
                for (int part = 1; part < chunks; part++)
                    for (int c = 0; c < C; c++) m[c] += m[(int64_t)part * C + c];
                for (int c = 0; c < C; c++) m[c] /= (float)HW;
                gate_mlp(m, m, C, hidden, w1, b1, w2t, b2, act, z);
            }
        } else {
            for (int b = 0; b < B; b++) {  /* gate_mlp's sums in its order, split across the threads */
                float *m = scratch + (int64_t)b * chunks * C;
                _Pragma("omp for schedule(static)")
                for (int c = 0; c < C; c++) {
                    for (int part = 1; part < chunks; part++) m[c] += m[(int64_t)part * C + c];
                    m[c] /= (float)HW;
                }
                _Pragma("omp for schedule(static)")
                for (int j = 0; j < hidden; j++) z[j] = activate(dot(w1 + (int64_t)j * C, m, C, b1[j]), act);
                _Pragma("omp for schedule(static)")
                for (int c0 = 0; c0 < C; c0 += 64)  /* 64 channels of every row of w2t */
                    gate_output(z, m, C, hidden, w2t, b2, 1.f, c0, c0 + 64 < C ? c0 + 64 : C);
            }
        }
        _Pragma("omp for schedule(static)")
        for (int64_t p = 0; p < pixels; p++) {
            const float *restrict s = scratch + (p / HW) * chunks * C;
            float *restrict out = y + p * C;
            for (int c = 0; c < C; c++) out[c] = out[c] * s[c];
        }
    }
}

/* CBAM (Woo et al., ECCV 2018) as HAFEM has it, out = (y * ca) * sa, y untouched:
 *   ca = sigmoid(mlp(avg_p y) + mlp(max_p y)), mlp(m) = w2 relu(w1 m + b1) + b2, per sample;
 *   sa = sigmoid(conv_kxk([mean_c(y * ca), max_c(y * ca)]) + sb), per pixel (zero padding k/2).
 * The two MLP outputs meet only in their sum, so w2 runs once on relu(.avg) + relu(.max) with 2 b2.
 * sw: 2 x k x k (the mean's taps, then the max's); sb: NULL for none.
 * scratch: B*(2*C + 2*HW) floats: per sample the avg and max pools (then ca over the avg's), and the
 * two channel statistics maps. Max keeps NaN, as torch.amax. */
INLINE float max_nan(float m, float v) { return (v > m || v != v) ? v : m; }

void cbam(const float *y, float *out, int B, int H, int W, int C, int hidden, const float *w1, const float *b1,
          const float *w2t, const float *b2, const float *sw, const float *sb, int k, float *scratch,
          int threads) {
    int HW = H * W;
    float *pools = scratch, *stats = scratch + (int64_t)B * 2 * C;
    int64_t blocks = (C + L - 1) / L;
    _Pragma("omp parallel num_threads(threads)")
    {
        _Pragma("omp for schedule(static)")
        for (int64_t t = 0; t < B * blocks; t++) {  /* the pools of L channels, down the pixels */
            int b = (int)(t / blocks), c0 = (int)(t % blocks) * L, n = C - c0 < L ? C - c0 : L;
            const float *yb = y + (int64_t)b * HW * C + c0;
            float sum[L] = {0.f}, top[L];
            for (int l = 0; l < n; l++) top[l] = -INFINITY;
            for (int p = 0; p < HW; p++)
                for (int l = 0; l < n; l++) {
                    float v = yb[(int64_t)p * C + l];
                    sum[l] += v;
                    top[l] = max_nan(top[l], v);
                }
            for (int l = 0; l < n; l++) {
                pools[(int64_t)b * 2 * C + c0 + l] = sum[l] / (float)HW;
                pools[(int64_t)b * 2 * C + C + c0 + l] = top[l];
            }
        }
        _Pragma("omp for schedule(static)")
        for (int b = 0; b < B; b++) {  /* ca, over the sample's avg pool */
            float *avg = pools + (int64_t)b * 2 * C, *top = avg + C, z[hidden];
            for (int j = 0; j < hidden; j++) {
                float za = dot(w1 + (int64_t)j * C, avg, C, b1[j]), zm = dot(w1 + (int64_t)j * C, top, C, b1[j]);
                z[j] = (za < 0.f ? 0.f : za) + (zm < 0.f ? 0.f : zm);  /* NaN stays NaN, as torch.relu */
            }
            gate_output(z, avg, C, hidden, w2t, b2, 2.f, 0, C);
        }
        _Pragma("omp for schedule(static)")
        for (int64_t p = 0; p < (int64_t)B * HW; p++) {  /* the channel statistics of y * ca */
            int64_t b = p / HW;
            const float *ca = pools + b * 2 * C, *yp = y + p * C;
            float part[L] = {0.f}, s = 0.f, top = -INFINITY;
            int c = 0;
            for (; c + L <= C; c += L)
                for (int l = 0; l < L; l++) part[l] += yp[c + l] * ca[c + l];
            for (; c < C; c++) s += yp[c] * ca[c];
            for (int l = 0; l < L; l++) s += part[l];
            for (c = 0; c < C; c++) top = max_nan(top, yp[c] * ca[c]);
            stats[b * 2 * HW + p % HW] = s / (float)C;
            stats[b * 2 * HW + HW + p % HW] = top;
        }
        _Pragma("omp for schedule(static)")
        for (int64_t p = 0; p < (int64_t)B * HW; p++) {  /* sa, then the output pixel */
            int64_t b = p / HW;
            int i = (int)(p % HW) / W, x = (int)(p % HW) % W, r = k / 2;
            const float *mean = stats + b * 2 * HW, *top = mean + HW, *ca = pools + b * 2 * C, *yp = y + p * C;
            float acc = sb ? sb[0] : 0.f;
            for (int dy = 0; dy < k; dy++) {
                int iy = i + dy - r;
                if (iy < 0 || iy >= H) continue;
                for (int dx = 0; dx < k; dx++) {
                    int ix = x + dx - r;
                    if (ix < 0 || ix >= W) continue;
                    acc += mean[iy * W + ix] * sw[dy * k + dx] + top[iy * W + ix] * sw[k * k + dy * k + dx];
                }
            }
            float s = sigmoid(acc), *o = out + p * C;
            for (int c = 0; c < C; c++) o[c] = (yp[c] * ca[c]) * s;
        }
    }
}
