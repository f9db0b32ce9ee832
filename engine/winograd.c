/* Winograd F(4x4, 3x3) transforms for stride-1, pad-1 3x3 convolutions on CPU (Lavin & Gray,
 * "Fast Algorithms for Convolutional Neural Networks", 2016), interpolation points 0, +-1, +-2, inf.
 *
 *   Y = A^T [ (G g G^T) (.) (B^T d B) ] A      per 6x6 input tile d, 4x4 output tile Y
 *
 * The 36 element-wise products summed over input channels are 36 GEMMs, which ferfuse runs as one
 * grouped 1x1 convolution on oneDNN or on its own GEMM (pointwise.c's gemm_groups), whichever timed
 * faster (engine/winograd.py); this file holds only the two transforms,
 * the parts no library exposes. Layouts (all channels-last):
 *   x: B x H x W x C                  the conv input, zero padding of 1 implied
 *   v: B x Th x Tw x 36 x C           transformed input tiles (a [B, 36*C, Th, Tw] NHWC tensor)
 *   m: B x Th x Tw x 36 x K           GEMM output, same layout with K channels
 *   y: B x H x W x K                  y = act(A^T m A + bias (+ residual))
 * Channels go in blocks of 16 (one AVX-512 vector of floats; the compiler vectorises the lane
 * loops), with a scalar tail for channel counts that are not multiples of 16.
 * No -ffast-math: NaN and Inf propagate as IEEE arithmetic makes them. */
#include <stdint.h>
#include <string.h>

#define L 16

#define INLINE static inline __attribute__((always_inline))

/* B^T applied to six columns of 16 lanes: t_u = sum_i BT[u][i] d_i */
INLINE void bt6(float t[6][L], const float *d0, const float *d1, const float *d2, const float *d3,
                const float *d4, const float *d5) {
    for (int l = 0; l < L; l++) {
        t[0][l] = 4.f * d0[l] - 5.f * d2[l] + d4[l];
        t[1][l] = -4.f * (d1[l] + d2[l]) + d3[l] + d4[l];
        t[2][l] = 4.f * (d1[l] - d2[l]) - d3[l] + d4[l];
        t[3][l] = 2.f * (d3[l] - d1[l]) - d2[l] + d4[l];
        t[4][l] = 2.f * (d1[l] - d3[l]) - d2[l] + d4[l];
        t[5][l] = 4.f * d1[l] - 5.f * d3[l] + d5[l];
    }
}

/* A^T applied to six columns: o_i = sum_u AT[i][u] m_u */
INLINE void at6(float o[4][L], const float *m0, const float *m1, const float *m2, const float *m3,
                const float *m4, const float *m5) {
    for (int l = 0; l < L; l++) {
        float s12 = m1[l] + m2[l], d12 = m1[l] - m2[l], s34 = m3[l] + m4[l], d34 = m3[l] - m4[l];
        o[0][l] = m0[l] + s12 + s34;
        o[1][l] = d12 + 2.f * d34;
        o[2][l] = s12 + 4.f * s34;
        o[3][l] = d12 + 8.f * d34 + m5[l];
    }
}

/* One output pixel's block of channels: y = act(value + bias (+ residual)). The ReLU keeps NaN,
 * as torch.relu does. */
INLINE void store_pixel(float *dst, const float *val, const float *bias, const float *res, int lanes, int relu) {
    for (int l = 0; l < lanes; l++) {
        float v = val[l] + bias[l];
        if (res) v += res[l];
        dst[l] = (relu && v < 0.f) ? 0.f : v;
    }
}

/* An a×a input tile at (h0, w0) into d[a][a][L]: zeros outside the map (the conv's padding) and in
 * the unused lanes of a tail block. */
INLINE void load_tile(float *d, int a, const float *x, int H, int W, int C, int h0, int w0, int c0, int lanes) {
    for (int i = 0; i < a; i++) {
        int h = h0 + i;
        for (int j = 0; j < a; j++) {
            int w = w0 + j;
            float *dst = d + (i * a + j) * L;
            if (lanes < L) memset(dst, 0, sizeof(float) * L);
            if (h >= 0 && h < H && w >= 0 && w < W)
                memcpy(dst, x + ((int64_t)h * W + w) * C + c0, sizeof(float) * lanes);
            else
                memset(dst, 0, sizeof(float) * L);
        }
    }
}

/* `lanes` is the literal L for full blocks (inlined: fixed-size copies become vector moves) */
INLINE void input_tile(const float *x, float *v, int H, int W, int C, int h0, int w0, int c0, int lanes) {
    float d[6][6][L], t[6][6][L];  /* d[row][col][lane]; t[u][col][lane] */
    load_tile(&d[0][0][0], 6, x, H, W, C, h0, w0, c0, lanes);
    for (int j = 0; j < 6; j++) {  /* down the rows: t[.][j] = B^T d[.][j] */
        float col[6][L];
        bt6(col, d[0][j], d[1][j], d[2][j], d[3][j], d[4][j], d[5][j]);
        for (int u = 0; u < 6; u++) memcpy(t[u][j], col[u], sizeof col[u]);
    }
    for (int u = 0; u < 6; u++) {  /* along the columns: v[u][.] = t[u][.] B */
        float out[6][L];
        bt6(out, t[u][0], t[u][1], t[u][2], t[u][3], t[u][4], t[u][5]);
        for (int s = 0; s < 6; s++) memcpy(v + (int64_t)(u * 6 + s) * C + c0, out[s], sizeof(float) * lanes);
    }
}


INLINE void output_tile(const float *m, const float *bias, const float *res, float *y, int H, int W, int K,
                        int h0, int w0, int k0, int lanes, int relu) {
    float mm[36][L], t[4][6][L];  /* t[i][s] = sum_u AT[i][u] m[u][s] */
    for (int p = 0; p < 36; p++) {
        memcpy(mm[p], m + (int64_t)p * K + k0, sizeof(float) * lanes);
        if (lanes < L) memset(mm[p] + lanes, 0, sizeof(float) * (L - lanes));
    }
    for (int s = 0; s < 6; s++) {
        float out[4][L];
        at6(out, mm[s], mm[6 + s], mm[12 + s], mm[18 + s], mm[24 + s], mm[30 + s]);
        for (int i = 0; i < 4; i++) memcpy(t[i][s], out[i], sizeof out[i]);
    }
    for (int i = 0; i < 4 && h0 + i < H; i++) {
        float out[4][L];
        at6(out, t[i][0], t[i][1], t[i][2], t[i][3], t[i][4], t[i][5]);
        for (int j = 0; j < 4 && w0 + j < W; j++) {
            int64_t at = ((int64_t)(h0 + i) * W + w0 + j) * K + k0;
            store_pixel(y + at, out[j], bias + k0, res ? res + at : 0, lanes, relu);
        }
    }
}


/* ---- F(2x2, 3x3): 4x4 input tiles, 16 products per tile (2.25x fewer multiply-adds than direct).
 * For small maps (7x7) where F(4x4, 3x3)'s 36 transformed matrices cost more to read than they
 * save. B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], A^T = [1 1 1 0; 0 1 -1 -1]. */

INLINE void input_tile2(const float *x, float *v, int H, int W, int C, int h0, int w0, int c0, int lanes) {
    float d[4][4][L], t[4][4][L];
    load_tile(&d[0][0][0], 4, x, H, W, C, h0, w0, c0, lanes);
    for (int j = 0; j < 4; j++)
        for (int l = 0; l < L; l++) {
            t[0][j][l] = d[0][j][l] - d[2][j][l];
            t[1][j][l] = d[1][j][l] + d[2][j][l];
            t[2][j][l] = d[2][j][l] - d[1][j][l];
            t[3][j][l] = d[1][j][l] - d[3][j][l];
        }
    for (int u = 0; u < 4; u++) {
        float out[4][L];
        for (int l = 0; l < L; l++) {
            out[0][l] = t[u][0][l] - t[u][2][l];
            out[1][l] = t[u][1][l] + t[u][2][l];
            out[2][l] = t[u][2][l] - t[u][1][l];
            out[3][l] = t[u][1][l] - t[u][3][l];
        }
        for (int s = 0; s < 4; s++) memcpy(v + (int64_t)(u * 4 + s) * C + c0, out[s], sizeof(float) * lanes);
    }
}


INLINE void output_tile2(const float *m, const float *bias, const float *res, float *y, int H, int W, int K,
                         int h0, int w0, int k0, int lanes, int relu) {
    float mm[16][L], t[2][4][L];
    for (int p = 0; p < 16; p++) {
        memcpy(mm[p], m + (int64_t)p * K + k0, sizeof(float) * lanes);
        if (lanes < L) memset(mm[p] + lanes, 0, sizeof(float) * (L - lanes));
    }
    for (int s = 0; s < 4; s++)
        for (int l = 0; l < L; l++) {
            t[0][s][l] = mm[s][l] + mm[4 + s][l] + mm[8 + s][l];
            t[1][s][l] = mm[4 + s][l] - mm[8 + s][l] - mm[12 + s][l];
        }
    for (int i = 0; i < 2 && h0 + i < H; i++) {
        float out[2][L];
        for (int l = 0; l < L; l++) {
            out[0][l] = t[i][0][l] + t[i][1][l] + t[i][2][l];
            out[1][l] = t[i][1][l] - t[i][2][l] - t[i][3][l];
        }
        for (int j = 0; j < 2 && w0 + j < W; j++) {
            int64_t at = ((int64_t)(h0 + i) * W + w0 + j) * K + k0;
            store_pixel(y + at, out[j], bias + k0, res ? res + at : 0, lanes, relu);
        }
    }
}

/* ---- the tile loops: one OpenMP iteration per tile (b, ty, tx), channel blocks of L with a tail.
 * M: output tile size, A2: products per tile. */
#define INPUT_DRIVER(NAME, TILE_FN, M, A2)                                                              \
    void NAME(const float *x, float *v, int B, int H, int W, int C, int Th, int Tw, int threads) {     \
        int64_t tiles = (int64_t)B * Th * Tw;                                                          \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                              \
        for (int64_t tile = 0; tile < tiles; tile++) {                                                 \
            int b = (int)(tile / ((int64_t)Th * Tw)), r = (int)(tile % ((int64_t)Th * Tw));            \
            int h0 = M * (r / Tw) - 1, w0 = M * (r % Tw) - 1;                                         \
            const float *xb = x + (int64_t)b * H * W * C;                                              \
            float *vt = v + tile * A2 * C;                                                             \
            int c0 = 0;                                                                                \
            for (; c0 + L <= C; c0 += L) TILE_FN(xb, vt, H, W, C, h0, w0, c0, L);                      \
            if (c0 < C) TILE_FN(xb, vt, H, W, C, h0, w0, c0, C - c0);                                  \
        }                                                                                              \
    }

#define OUTPUT_DRIVER(NAME, TILE_FN, M, A2)                                                             \
    void NAME(const float *m, const float *bias, const float *res, float *y, int B, int H, int W, int K, \
              int Th, int Tw, int relu, int threads) {                                                 \
        int64_t tiles = (int64_t)B * Th * Tw;                                                          \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                              \
        for (int64_t tile = 0; tile < tiles; tile++) {                                                 \
            int b = (int)(tile / ((int64_t)Th * Tw)), r = (int)(tile % ((int64_t)Th * Tw));            \
            int h0 = M * (r / Tw), w0 = M * (r % Tw);                                                 \
            int64_t plane = (int64_t)b * H * W * K;                                                    \
            const float *mt = m + tile * A2 * K, *rp = res ? res + plane : 0;                          \
            int k0 = 0;                                                                                \
            for (; k0 + L <= K; k0 += L) TILE_FN(mt, bias, rp, y + plane, H, W, K, h0, w0, k0, L, relu); \
            if (k0 < K) TILE_FN(mt, bias, rp, y + plane, H, W, K, h0, w0, k0, K - k0, relu);           \
        }                                                                                              \
    }

INPUT_DRIVER(winograd_f43_input, input_tile, 4, 36)
OUTPUT_DRIVER(winograd_f43_output, output_tile, 4, 36)
INPUT_DRIVER(winograd_f23_input, input_tile2, 2, 16)
OUTPUT_DRIVER(winograd_f23_output, output_tile2, 2, 16)
