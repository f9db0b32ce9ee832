/* An EfficientNet MBConv block (HAFEM's trunk: torchvision's structure, engine/patterns/mbconv.py)
 * in one call, where each of its convs took ferfuse's C form at this shape:
 *
 *   u   = act_e(x We^T + be)              the 1x1 expand (pointwise.c), skipped (u = x) without one
 *   y   = act_d(dwconv_kxk(u) + bd)       the depthwise conv (depthwise.c), stride 1 or 2
 *   y   = y * se(y)                       squeeze-and-excitation in place (depthwise.c)
 *   out = y Wp^T + bp (+ x)               the 1x1 project with the residual add (pointwise.c)
 *
 * The passes are the very functions the four separate calls run, in the same order. What goes is
 * the Python between them: on the 2-core AVX2 EPYC a block spent ~90 us in place on it at batch 1
 * (the interpreter's code and data evicted by the kernels between calls), 39 blocks a forward.
 * mbconv_chain goes on to a run of such blocks, each reading the one before's output: the Python
 * between blocks goes too.
 *
 * The batch goes through the four passes `group` samples at a time (mobile.py samples_per_pass:
 * as many as keep u and y within half the last-level cache), so the depthwise conv, the gate and
 * the project GEMM read u and y from the cache where the whole batch's maps would come from DRAM.
 * A batch of one group is the four calls bit for bit; with several, only the gate's pixel sums
 * split differently across threads (squeeze_excite's `chunks`). u and y hold one group: the
 * caller's scratch maps, channels-last like x and out. */
#include "pointwise.c"
#include "depthwise.c"

/* A block at one input shape: its sizes, weights and plan, one int64 each (pointers as integers),
 * in this order; mobile.py RECORD names the same fields in the same order. */
enum {
    R_B, R_H, R_W, R_CIN,
    R_WE, R_BE, R_CMID, R_ACT_E,                                  /* expand (R_WE 0: none) */
    R_TAPS, R_BD, R_K, R_STRIDE, R_HO, R_WO, R_START, R_KSIZE, R_ACT_D,  /* depthwise */
    R_HIDDEN, R_W1, R_B1, R_W2T, R_B2, R_ACT_S, R_CHUNKS,            /* squeeze-excite */
    R_WP, R_BP, R_COUT, R_RESIDUAL,                               /* project */
    R_GROUP, R_THREADS, R_FIELDS
};

#define WEIGHTS(field) ((const float *)(intptr_t)r[field])

void mbconv(const int64_t *r, const float *x, float *u, float *y, float *se_scratch, float *out) {
    const int B = r[R_B], H = r[R_H], W = r[R_W], cin = r[R_CIN], cmid = r[R_CMID], Ho = r[R_HO], Wo = r[R_WO];
    const int cout = r[R_COUT], group = r[R_GROUP], threads = r[R_THREADS];
    const float *we = WEIGHTS(R_WE), *be = WEIGHTS(R_BE), *taps = WEIGHTS(R_TAPS), *bd = WEIGHTS(R_BD);
    const float *w1 = WEIGHTS(R_W1), *b1 = WEIGHTS(R_B1), *w2t = WEIGHTS(R_W2T), *b2 = WEIGHTS(R_B2);
    const float *wp = WEIGHTS(R_WP), *bp = WEIGHTS(R_BP);
    const int *start = (const int *)(intptr_t)r[R_START], *ksize = (const int *)(intptr_t)r[R_KSIZE];
    for (int b0 = 0; b0 < B; b0 += group) {  /* `group` samples through all four passes at a time */
        int n = B - b0 < group ? B - b0 : group;
        const float *xg = x + (int64_t)b0 * H * W * cin;
        float *ug = we ? u : (float *)xg, *og = out + (int64_t)b0 * Ho * Wo * cout;
        if (we)
            gemm_groups(xg, cin, we, be, 0, ug, cmid, (int64_t)n * H * W, cin, cmid, 1, r[R_ACT_E], threads);
        /* read only: mixed_depthwise writes its input only for a PReLU, none here */
        mixed_depthwise(ug, taps, bd, 0, y, n, H, W, cmid, Ho, Wo, r[R_STRIDE], r[R_K], 1, start, ksize, r[R_ACT_D],
                        threads);
        squeeze_excite(y, n, Ho * Wo, cmid, r[R_HIDDEN], w1, b1, w2t, b2, r[R_ACT_S], se_scratch, r[R_CHUNKS], threads);
        gemm_groups(y, cmid, wp, bp, r[R_RESIDUAL] ? xg : 0, og, cout, (int64_t)n * Ho * Wo, cmid, cout, 1, ACT_NONE,
                    threads);
    }
}

/* n blocks in a row (records: n x R_FIELDS), each on the one before's output: x in, out out, the
 * maps between them alternately in ping and pong (each as large as the largest); u, y and
 * se_scratch as large as any block needs. The same calls as n mbconv calls, bit for bit. */
void mbconv_chain(const int64_t *records, int n, const float *x, float *u, float *y, float *se_scratch,
                  float *ping, float *pong, float *out) {
    for (int i = 0; i < n; i++) {
        float *to = i == n - 1 ? out : i % 2 ? pong : ping;
        mbconv(records + (int64_t)i * R_FIELDS, x, u, y, se_scratch, to);
        x = to;
    }
}
