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
 *
 * The batch goes through the four passes `group` samples at a time (mobile.py samples_per_pass:
 * as many as keep u and y within half the last-level cache), so the depthwise conv, the gate and
 * the project GEMM read u and y from the cache where the whole batch's maps would come from DRAM.
 * A batch of one group is the four calls bit for bit; with several, only the gate's pixel sums
 * split differently across threads (squeeze_excite's `chunks`). u and y hold one group: the
 * caller's scratch maps, channels-last like x and out. */
#include "pointwise.c"
#include "depthwise.c"

void mbconv(const float *x, float *u, float *y, float *out, int B, int H, int W, int cin,
            const float *we, const float *be, int cmid, int act_e,
            const float *taps, const float *bd, int k, int stride, int Ho, int Wo, const int *start,
            const int *ksize, int act_d,
            int hidden, const float *w1, const float *b1, const float *w2t, const float *b2, int act_s,
            float *se_scratch, int chunks,
            const float *wp, const float *bp, int cout, int residual, int group, int threads) {
    for (int b0 = 0; b0 < B; b0 += group) {  /* `group` samples through all four passes at a time */
        int n = B - b0 < group ? B - b0 : group;
        const float *xg = x + (int64_t)b0 * H * W * cin;
        float *ug = we ? u : (float *)xg, *og = out + (int64_t)b0 * Ho * Wo * cout;
        if (we)
            gemm_groups(xg, cin, we, be, 0, ug, cmid, (int64_t)n * H * W, cin, cmid, 1, act_e, threads);
        /* read only: mixed_depthwise writes its input only for a PReLU, none here */
        mixed_depthwise(ug, taps, bd, 0, y, n, H, W, cmid, Ho, Wo, stride, k, 1, start, ksize, act_d, threads);
        squeeze_excite(y, n, Ho * Wo, cmid, hidden, w1, b1, w2t, b2, act_s, se_scratch, chunks, threads);
        gemm_groups(y, cmid, wp, bp, residual ? xg : 0, og, cout, (int64_t)n * Ho * Wo, cmid, cout, 1, ACT_NONE,
                    threads);
    }
}
