/* 1x1 (pointwise) convolution on channels-last maps as a GEMM with its epilogue fused:
 *
 *   y[p, n] = act(sum_k x[p, k] w[n, k] + bias[n] (+ res[p, n]))      p over B*H*W pixels
 *
 * The expand and project convolutions of mobile blocks (EfficientNet's MBConv in HAFEM, MHAN's
 * Mix_Depth_Wise) are most of their networks' multiply-adds. oneDNN ran them at 100-140 GFLOP/s
 * on a 2-core AVX2 EPYC, where ONNX Runtime's MLAS kernels ran the same layers at ~170; this is a
 * register-blocked GEMM in the way of BLIS (Van Zee & van de Geijn, 2015), chosen per layer and
 * input shape against oneDNN by timing (engine/pointwise.py), so a CPU where oneDNN is faster
 * keeps oneDNN.
 *
 * Layouts (float32):
 *   x:   M x K      (a channels-last map: pixel-major, channels contiguous; rows ldx apart)
 *   wp:  P x K x NR the weight packed once: panel j holds output channels [NR j, NR j + NR) for
 *                   every k contiguously, zero-padded past N (P = ceil(N / NR))
 *   bias: P * NR    zero-padded
 *   y, res: M x N   (rows ldy apart)
 * Blocking: the micro-kernel keeps an MR x NR tile of y in 12 AVX registers over a block of KC
 * input channels (with AVX-512, four panels at once: an MR x 4 NR tile in 24 registers, wide_rows);
 * a KC x NR panel of wp (16 KB) stays in L1 while it sweeps an MC-pixel block of x (in L2). K
 * beyond KC accumulates through y, one KC-block sum at a time. While a panel computes, the next
 * one is prefetched: a network's weights (HAFEM's: 130 MB) come from DRAM on every
 * forward, and on a 7x7 map a panel serves only 9 tiles. The next panel's rows are spread evenly
 * over this panel's tiles, a few in flight at a time: all 256 in the first tile, one per k, filled
 * the core's miss buffers and stalled that tile on its own loads. Spread, on the 2-core Zen 4
 * (AVX-512), timed alternately in one process against the old code: DAN 19.8 -> 17.3 ms at batch 1
 * and 143.9 -> 126.0 at batch 8, MACA-Net 31.0 -> 27.0 at batch 1, HAFEM 43.4 -> 41.7 at batch 1.
 * The rows go to L2 (T1), not L1: the current panel and x's rows hold L1, and L1's own prefetcher
 * takes the next panel's rows from L2 as it streams them (MACA-Net 32.2 -> 28.9 ms at batch 1, MHAN
 * 67.8 -> 64.9 at batch 8, DAN level at batch 8).
 * FMA contraction rounds once per multiply-add; no -ffast-math: NaN and Inf propagate. */
#include <stdint.h>

#define MR 6
#define NR 16
#define KC 256
#define MC 96 /* pixels per task block: a multiple of MR */

#define INLINE static inline __attribute__((always_inline))

#include "activation.h" /* the ACT_* codes, activate() and activate8(), shared with depthwise.c */

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* lanes l < n of 8 set: the load/store mask of a tail block of output channels */
INLINE __m256i lane_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Masked loads and stores of a tile's tail lanes: with AVX-512 (VL) as mask-register moves, where
 * AVX2's vmaskmovps, which the AVX2 build keeps, is slow: on the 2-core Zen 4 a 24-channel 1x1
 * conv's tiles spent about a fifth of their time in its stores. */
#if defined(__AVX512F__) && defined(__AVX512VL__)
#define MASK8 __mmask8
INLINE __mmask8 mask8(int n) { return n <= 0 ? 0 : n >= 8 ? 0xFF : (__mmask8)((1u << n) - 1); }
INLINE __m256 masked_load8(const float *p, __m256i m, __mmask8 k) { (void)m; return _mm256_maskz_loadu_ps(k, p); }
INLINE void masked_store8(float *p, __m256i m, __mmask8 k, __m256 v) { (void)m; _mm256_mask_storeu_ps(p, k, v); }
#else
#define MASK8 int
INLINE int mask8(int n) { return n; }
INLINE __m256 masked_load8(const float *p, __m256i m, int k) { (void)k; return _mm256_maskload_ps(p, m); }
INLINE void masked_store8(float *p, __m256i m, int k, __m256 v) { (void)k; _mm256_maskstore_ps(p, m, v); }
#endif

/* One mr x NR tile of y (mr <= MR) at rows [0, mr), channels [n0, n0 + nr) (nr <= NR), over
 * input channels [k0, k0 + kc). mr is a constant at each call (tile() below), so the rows past it
 * compile away: a 7x7 map's 49 pixels are 8 tiles of 6 and one of 1, where a tail tile computed
 * as a full one cost 54 rows' work. first: start from the bias, else from zero and add y's partial
 * sum at the end (blocks of KC summed apart: smaller rounding error over long K); last: add the
 * residual, apply act. half (a constant too, set where nr <= 8): the panel's upper 8 channels are
 * padding, so their multiply-adds, loads and stores are left out; a 24- or 40-channel output's last
 * panel is such a one. With the masked moves above, on one Zen 4 core, HAFEM's 24-channel project
 * convs ran 1.2-1.4x faster and its 40-channel ones 1.1x, the same bits (its forward: within noise). */
INLINE void tile_rows(const float *x, int64_t ldx, const float *panel, const float *pf, int npf, const float *bias,
                      const float *res, float *y, int64_t ldy, int mr, int nr, int kc, int first, int last,
                      int act, const int half) {
    const float *a[MR];
    for (int i = 0; i < MR; i++) a[i] = x + (i < mr ? i : mr - 1) * ldx;
    __m256i m0 = lane_mask(nr), m1 = lane_mask(nr - 8);
    MASK8 k0 = mask8(nr), k1 = mask8(nr - 8);
    /* a later K-block sums from zero and is added to y after */
    __m256 init0 = first ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    __m256 init1 = first ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
    /* the 12 accumulators as named locals: kept in an array that the epilogue indexes, gcc stored
     * them to the stack on every k (half the kernel's speed); copied to one after the loop */
#define ACC(i) __m256 c##i##0 = init0, c##i##1 = init1;
    ACC(0) ACC(1) ACC(2) ACC(3) ACC(4) ACC(5)
    const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
#define FMA_ROW(i)                                           \
    if (i < mr) {                                            \
        __m256 ai = _mm256_broadcast_ss(a##i + k);           \
        c##i##0 = _mm256_fmadd_ps(ai, b0, c##i##0);          \
        if (!half) c##i##1 = _mm256_fmadd_ps(ai, b1, c##i##1); \
    }
    if (npf) {  /* npf 64-byte rows of the next panel into L2, one every `step` k: they arrive while this computes */
        int step = kc / npf > 1 ? kc / npf : 1, due = 0;
        for (int k = 0; k < kc; k++) {
            __m256 b0 = _mm256_loadu_ps(panel + k * NR), b1 = _mm256_loadu_ps(panel + k * NR + 8);
            if (k == due) {
                _mm_prefetch((const char *)pf, _MM_HINT_T1);
                pf += NR;
                due = --npf ? due + step : kc;
            }
            FMA_ROW(0) FMA_ROW(1) FMA_ROW(2) FMA_ROW(3) FMA_ROW(4) FMA_ROW(5)
        }
    }
    else
        for (int k = 0; k < kc; k++) {
            __m256 b0 = _mm256_loadu_ps(panel + k * NR), b1 = _mm256_loadu_ps(panel + k * NR + 8);
            FMA_ROW(0) FMA_ROW(1) FMA_ROW(2) FMA_ROW(3) FMA_ROW(4) FMA_ROW(5)
        }
    __m256 c[MR][2];
#define OUT(i) c[i][0] = c##i##0; c[i][1] = c##i##1;
    OUT(0) OUT(1) OUT(2) OUT(3) OUT(4) OUT(5)
#undef ACC
#undef FMA_ROW
#undef OUT
    for (int i = 0; i < MR; i++) {
        if (i >= mr) break;
        __m256 v0 = c[i][0], v1 = c[i][1];
        if (!first) {
            v0 = _mm256_add_ps(v0, masked_load8(y + i * ldy, m0, k0));
            v1 = _mm256_add_ps(v1, masked_load8(y + i * ldy + 8, m1, k1));
        }
        if (last) {
            if (res) {
                v0 = _mm256_add_ps(v0, masked_load8(res + i * ldy, m0, k0));
                v1 = _mm256_add_ps(v1, masked_load8(res + i * ldy + 8, m1, k1));
            }
#if defined(__AVX512F__)
            if (act == ACT_SILU) {  /* the tile's 16 channels in one register: the same bits */
                __m512 v = silu16(join16(v0, v1));
                v0 = low8(v);
                v1 = high8(v);
            } else {
                v0 = activate8(v0, act);
                v1 = activate8(v1, act);
            }
#else
            v0 = activate8(v0, act);
            v1 = activate8(v1, act);
#endif
        }
        if (nr == NR) {
            _mm256_storeu_ps(y + i * ldy, v0);
            _mm256_storeu_ps(y + i * ldy + 8, v1);
        } else {
            masked_store8(y + i * ldy, m0, k0, v0);
            if (!half)
                masked_store8(y + i * ldy + 8, m1, k1, v1);
        }
    }
}

static void tile(const float *x, int64_t ldx, const float *panel, const float *pf, int npf, const float *bias,
                 const float *res, float *y, int64_t ldy, int mr, int nr, int kc, int first, int last, int act) {
#define ROWS(r) case r: tile_rows(x, ldx, panel, pf, npf, bias, res, y, ldy, r, nr, kc, first, last, act, half); break;
    if (nr <= 8) {
        const int half = 1;
        switch (mr) { ROWS(6) ROWS(5) ROWS(4) ROWS(3) ROWS(2) ROWS(1) }
    } else {
        const int half = 0;
        switch (mr) { ROWS(6) ROWS(5) ROWS(4) ROWS(3) ROWS(2) ROWS(1) }
    }
#undef ROWS
}

#if defined(__AVX512F__)
/* Wide tiles, where the CPU has AVX-512: an mr x 64 tile, four panels at once, one 16-lane register
 * per panel and row (24 accumulators of the 32 registers). Each k loads the four panels' rows and
 * broadcasts each pixel's input once for four multiply-adds, where the 16-channel tile broadcast it
 * for two: on HAFEM's expand convs (K of 24 to 64), whose k loops are short, the 16-channel tile's
 * setup, epilogue and loads ran at 31-62% of one Zen 4 core's FMA peak. Each output is the same
 * chain of multiply-adds in the same order as in tile_rows, and the epilogue the same per lane
 * (SiLU on 16 lanes, the others on two halves of 8): the same bits. The four panels' rows are K NR
 * apart (pstep); the group's last panel holds nr channels. The next panels' rows are prefetched as
 * tile_rows does, npf of them: from row *pf_row of the panel at *pf_at, on into the next panel
 * (pfstep further) after its pfkc rows; both are left where the next tile goes on. */
#define WIDE 4

INLINE __m512 activate16(__m512 v, int act) {
    return act == ACT_SILU ? silu16(v) : join16(activate8(low8(v), act), activate8(high8(v), act));
}

INLINE void wide_rows(const float *x, int64_t ldx, const float *panel, int64_t pstep, const float **pf_at,
                      int *pf_row, int64_t pfstep, int pfkc, int npf, const float *bias, const float *res, float *y,
                      int64_t ldy, int mr, int nr, int kc, int first, int last, int act) {
    const float *a0 = x, *a1 = x + (1 < mr ? 1 : mr - 1) * ldx, *a2 = x + (2 < mr ? 2 : mr - 1) * ldx,
                *a3 = x + (3 < mr ? 3 : mr - 1) * ldx, *a4 = x + (4 < mr ? 4 : mr - 1) * ldx,
                *a5 = x + (5 < mr ? 5 : mr - 1) * ldx;
    __mmask16 tail = nr == NR ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
    __m512 init0 = first ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    __m512 init1 = first ? _mm512_loadu_ps(bias + NR) : _mm512_setzero_ps();
    __m512 init2 = first ? _mm512_loadu_ps(bias + 2 * NR) : _mm512_setzero_ps();
    __m512 init3 = first ? _mm512_loadu_ps(bias + 3 * NR) : _mm512_setzero_ps();
#define ACC(i) __m512 c##i##0 = init0, c##i##1 = init1, c##i##2 = init2, c##i##3 = init3;
    ACC(0) ACC(1) ACC(2) ACC(3) ACC(4) ACC(5)
#define FMA_ROW(i)                                           \
    if (i < mr) {                                            \
        __m512 ai = _mm512_set1_ps(a##i[k]);                 \
        c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0);          \
        c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1);          \
        c##i##2 = _mm512_fmadd_ps(ai, b2, c##i##2);          \
        c##i##3 = _mm512_fmadd_ps(ai, b3, c##i##3);          \
    }
    const float *p0 = panel, *p1 = panel + pstep, *p2 = panel + 2 * pstep, *p3 = panel + 3 * pstep;
    int step = npf ? (kc / npf > 1 ? kc / npf : 1) : kc, due = npf ? 0 : kc;
    const float *pfq = *pf_at;
    int row = *pf_row;
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(p0 + k * NR), b1 = _mm512_loadu_ps(p1 + k * NR);
        __m512 b2 = _mm512_loadu_ps(p2 + k * NR), b3 = _mm512_loadu_ps(p3 + k * NR);
        if (k == due) {
            _mm_prefetch((const char *)(pfq + (int64_t)row * NR), _MM_HINT_T1);
            if (++row == pfkc) {
                row = 0;
                pfq += pfstep;
            }
            due = --npf ? due + step : kc;
        }
        FMA_ROW(0) FMA_ROW(1) FMA_ROW(2) FMA_ROW(3) FMA_ROW(4) FMA_ROW(5)
    }
    *pf_at = pfq, *pf_row = row;
    __m512 c[MR][WIDE];
#define OUT(i) c[i][0] = c##i##0; c[i][1] = c##i##1; c[i][2] = c##i##2; c[i][3] = c##i##3;
    OUT(0) OUT(1) OUT(2) OUT(3) OUT(4) OUT(5)
#undef ACC
#undef FMA_ROW
#undef OUT
    for (int i = 0; i < MR; i++) {
        if (i >= mr) break;
        for (int q = 0; q < WIDE; q++) {
            __mmask16 m = q == WIDE - 1 ? tail : (__mmask16)0xFFFF;
            float *yq = y + i * ldy + q * NR;
            __m512 v = c[i][q];
            if (!first)
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, yq));
            if (last) {
                if (res)
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, res + i * ldy + q * NR));
                v = activate16(v, act);
            }
            _mm512_mask_storeu_ps(yq, m, v);
        }
    }
}

static void wide_tile(const float *x, int64_t ldx, const float *panel, int64_t pstep, const float **pf_at,
                      int *pf_row, int64_t pfstep, int pfkc, int npf, const float *bias, const float *res, float *y,
                      int64_t ldy, int mr, int nr, int kc, int first, int last, int act) {
#define ROWS(r) case r: wide_rows(x, ldx, panel, pstep, pf_at, pf_row, pfstep, pfkc, npf, bias, res, y, ldy, r, nr, \
                                  kc, first, last, act); break;
    switch (mr) { ROWS(6) ROWS(5) ROWS(4) ROWS(3) ROWS(2) ROWS(1) }
#undef ROWS
}
#endif


#else /* no AVX2 + FMA: a plain loop, correct and slow (the timing then keeps oneDNN) */

static void tile(const float *x, int64_t ldx, const float *panel, const float *pf, int npf, const float *bias,
                 const float *res, float *y, int64_t ldy, int mr, int nr, int kc, int first, int last, int act) {
    (void)pf, (void)npf;
    for (int i = 0; i < mr; i++)
        for (int n = 0; n < nr; n++) {
            float s = first ? bias[n] : y[i * ldy + n];
            for (int k = 0; k < kc; k++) s += x[i * ldx + k] * panel[k * NR + n];
            if (last) s = activate(res ? s + res[i * ldy + n] : s, act);
            y[i * ldy + n] = s;
        }
}

#endif

/* The panels a block reads after the w panels from panel j in K-block k0 (of kc rows): the following
 * ones of this K-block, else the first ones of the next; at most w of them (*count), of *rows rows
 * each. NULL where none follow. Their rows are prefetched spread over the current panels' tiles, so
 * a few are in flight at a time. */
static const float *next_panels(const float *wg, int K, int k0, int kc, int j, int w, int j0, int j1, int *count,
                                int *rows) {
    if (j + w < j1) {
        *count = j1 - j - w < w ? j1 - j - w : w, *rows = kc;
        return wg + ((int64_t)(j + w) * K + k0) * NR;
    }
    if (k0 + KC < K) {
        *count = j1 - j0 < w ? j1 - j0 : w, *rows = K - k0 - KC < KC ? K - k0 - KC : KC;
        return wg + ((int64_t)j0 * K + k0 + KC) * NR;
    }
    *count = 0, *rows = 0;
    return 0;
}

/* One block of work: group g, pixels [m0, m1), output-channel panels [j0, j1), every K-block. */
static void block(const float *x, int64_t ldx, const float *wp, const float *bias, const float *res, float *y,
                  int64_t ldy, int64_t m0, int64_t m1, int K, int N, int64_t g, int j0, int j1, int act) {
    static const float zeros[4 * NR];  /* the bias of a wide tile's four panels, where there is none */
    int panels = (N + NR - 1) / NR;
    const float *xg = x + g * K, *wg = wp + g * (int64_t)panels * K * NR;
    const float *rg = res ? res + g * N : 0;
    float *yg = y + g * N;
    int tiles = (int)((m1 - m0 + MR - 1) / MR);
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kc = K - k0 < KC ? K - k0 : KC;
        int j = j0;
#if defined(__AVX512F__) && defined(__FMA__)
        for (; j + WIDE <= j1; j += WIDE) {  /* four panels at a time (wide_rows), then one at a time */
            int n0 = j * NR, last_n0 = (j + WIDE - 1) * NR, nr = N - last_n0 < NR ? N - last_n0 : NR;
            const float *panel = wg + ((int64_t)j * K + k0) * NR;
            const float *bj = bias ? bias + (g * panels + j) * NR : zeros;
            int nq, next_kc;
            const float *next = next_panels(wg, K, k0, kc, j, WIDE, j0, j1, &nq, &next_kc);
            int rows = nq * next_kc, row = 0;
            for (int64_t m = m0, t = 0; m < m1; m += MR, t++) {
                int mr = m1 - m < MR ? (int)(m1 - m) : MR;
                int lo = (int)(t * rows / tiles), hi = (int)((t + 1) * rows / tiles);
                wide_tile(xg + m * ldx + k0, ldx, panel, (int64_t)K * NR, &next, &row, (int64_t)K * NR, next_kc,
                          hi - lo, bj, rg ? rg + m * ldy + n0 : 0, yg + m * ldy + n0, ldy, mr, nr, kc, k0 == 0,
                          k0 + kc == K, act);
            }
        }
#endif
        for (; j < j1; j++) {
            int n0 = j * NR, nr = N - n0 < NR ? N - n0 : NR;
            const float *panel = wg + ((int64_t)j * K + k0) * NR;
            const float *bj = bias ? bias + (g * panels + j) * NR : zeros;
            int count, next_kc;
            const float *next = next_panels(wg, K, k0, kc, j, 1, j0, j1, &count, &next_kc);
            for (int64_t m = m0, t = 0; m < m1; m += MR, t++) {
                int mr = m1 - m < MR ? (int)(m1 - m) : MR;
                int lo = (int)(t * next_kc / tiles), hi = (int)((t + 1) * next_kc / tiles);
                tile(xg + m * ldx + k0, ldx, panel, next ? next + (int64_t)lo * NR : 0, hi - lo, bj, rg ? rg + m * ldy + n0 : 0,
                     yg + m * ldy + n0, ldy, mr, nr, kc, k0 == 0, k0 + kc == K, act);
            }
        }
    }
}

/* For each group g < G:  y_g = act(x_g w_g^T + bias_g (+ res_g)), where x_g is M x K at x + g K with
 * rows ldx apart, y_g and res_g are M x N at y + g N with rows ldy apart, and w_g, bias_g the
 * g-th packed weight and bias (bias NULL: none). G = 1 with ldx = K, ldy = N is a 1x1 convolution;
 * the Winograd transform's 36 GEMMs (engine/winograd.py) are G = 36 on the transformed tiles in
 * place (x rows 36 K apart).
 * The work is G x (pixel blocks of equal size, at most MC) x (NR-channel panels) units, and each
 * thread takes an equal run of them in that order: tasks of whole panel runs per block, as before,
 * left one thread with 5 and the other 1 full block on a 14x14 map (blocks of 96, 96 and 4 pixels). */
void gemm_groups(const float *x, int64_t ldx, const float *wp, const float *bias, const float *res, float *y,
                 int64_t ldy, int64_t M, int K, int N, int G, int act, int threads) {
    if (M <= 0 || N <= 0 || G <= 0)  /* no output: nothing to do (and no blocks to divide the pixels into) */
        return;
    int panels = (N + NR - 1) / NR;
    int64_t mblocks = (M + MC - 1) / MC;
    int64_t mc = ((M + mblocks - 1) / mblocks + MR - 1) / MR * MR;  /* equal blocks, whole tiles */
    mblocks = (M + mc - 1) / mc;
    int64_t units = (int64_t)G * mblocks * panels;
    int teams = units < threads ? (int)units : threads;
    _Pragma("omp parallel for num_threads(teams) schedule(static, 1)")
    for (int team = 0; team < teams; team++) {
        int64_t u = units * team / teams, end = units * (team + 1) / teams;
        while (u < end) {  /* runs of panels within one (group, pixel block) */
            int64_t gm = u / panels, g = gm / mblocks, m0 = (gm % mblocks) * mc, m1 = m0 + mc < M ? m0 + mc : M;
            int j0 = (int)(u % panels), j1 = end - u < panels - j0 ? j0 + (int)(end - u) : panels;
            block(x, ldx, wp, bias, res, y, ldy, m0, m1, K, N, g, j0, j1, act);
            u += j1 - j0;
        }
    }
}
