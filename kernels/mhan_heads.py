"""MHAN's K SEDDA heads, max fusion, the depthwise H×W fusion conv and fc, on x after ELA.

Per head k (weights BN-folded, engine/patterns/mhan.py):
    x_h[c, h] = Σ_w kh[c, w] x[c, h, w] + bh[c];  x_w[c, w] = Σ_h kw[c, h] x[c, h, w] + bw[c]
    y_h, y_w  = h_swish(W1 · x_h + b1), h_swish(W1 · x_w + b1)   (C → M, shared by both directions)
    a_h, a_w  = σ(W2 · y_h + b2), σ(W3 · y_w + b3)                (M → C)
    s         = σ(S2 · ReLU(S1 · mean_h(a_h)·mean_w(a_w)))        GAP(a_h ⊗ a_w) is separable
    map_k     = a_h ⊗ a_w ⊗ s                                     returned, as upstream returns the maps
then fused = max_k map_k;  out[c] = Σ_p kl[c, p] x[c, p] fused[c, p] + bl[c];  logits = Wfc · out + bfc.
Three launches: the coordinate attention per (sample, head) writes a_h, a_w and the pooled vector
(C×(H+W+1) floats); the squeeze-excite op gives s; the fusion per sample writes the maps and
the logits.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from .compat import check_input, expect_shapes
from .registry import declare, launch
from .squeeze_excite import mlp, squeeze_excite_triton

BLOCK_C = 32
BLOCK_N = 16
MAX_SIDE = 8  # MHAN's map is 7×7 (112×112 images): one 8×8 tile, one configuration
MAX_MIP = 64


@triton.jit
def _h_swish(v):
    return v * tl.minimum(tl.maximum(v + 3.0, 0.0), 6.0) / 6.0


@triton.jit
def _directional(x_ptr, kh_ptr, bh_ptr, kw_ptr, bw_ptr, b, k, rc, c_ok, C, H, W, sxb, sxc, sxh, sxw,
                 BLOCK_S: tl.constexpr):
    """The depthwise (1, W) and (H, 1) convs of head k on channels rc: (x_h C×H, x_w C×W)."""
    rs = tl.arange(0, BLOCK_S)
    ok = c_ok[:, None, None] & (rs < H)[None, :, None] & (rs < W)[None, None, :]
    xt = tl.load(x_ptr + b * sxb + rc[:, None, None] * sxc + rs[None, :, None] * sxh + rs[None, None, :] * sxw,
                 mask=ok, other=0.0).to(tl.float32)
    kh = tl.load(kh_ptr + (k * C + rc[:, None]) * W + rs[None, :], mask=c_ok[:, None] & (rs < W)[None, :], other=0.0)
    kw = tl.load(kw_ptr + (k * C + rc[:, None]) * H + rs[None, :], mask=c_ok[:, None] & (rs < H)[None, :], other=0.0)
    x_h = tl.sum(xt * kh[:, None, :], axis=2) + tl.load(bh_ptr + k * C + rc, mask=c_ok, other=0.0)[:, None]
    x_w = tl.sum(xt * kw[:, :, None], axis=1) + tl.load(bw_ptr + k * C + rc, mask=c_ok, other=0.0)[:, None]
    return x_h, x_w


@triton.jit
def _coordinate_kernel(x_ptr, kh_ptr, bh_ptr, kw_ptr, bw_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr,
                       ah_ptr, aw_ptr, pooled_ptr, C, H, W, M, num_heads, sxb, sxc, sxh, sxw,
                       BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(0)
    k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rs = tl.arange(0, BLOCK_S)
    m_ok = rm < M
    y_h = tl.zeros((BLOCK_M, BLOCK_S), dtype=tl.float32)
    y_w = tl.zeros((BLOCK_M, BLOCK_S), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):  # W1 mixes channels: accumulate over every channel tile first
        rc = c0 + tl.arange(0, BLOCK_C)
        c_ok = rc < C
        x_h, x_w = _directional(x_ptr, kh_ptr, bh_ptr, kw_ptr, bw_ptr, b, k, rc, c_ok, C, H, W,
                                sxb, sxc, sxh, sxw, BLOCK_S)
        w1 = tl.load(w1_ptr + (k * M + rm[:, None]) * C + rc[None, :], mask=m_ok[:, None] & c_ok[None, :], other=0.0)
        y_h += tl.sum(w1[:, :, None] * x_h[None, :, :], axis=1)
        y_w += tl.sum(w1[:, :, None] * x_w[None, :, :], axis=1)
    b1 = tl.load(b1_ptr + k * M + rm, mask=m_ok, other=0.0)[:, None]
    y_h = _h_swish(y_h + b1)
    y_w = _h_swish(y_w + b1)
    row = (b * num_heads + k) * C
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        c_ok = rc < C
        wmask = c_ok[:, None] & m_ok[None, :]
        w2 = tl.load(w2_ptr + (k * C + rc[:, None]) * M + rm[None, :], mask=wmask, other=0.0)
        w3 = tl.load(w3_ptr + (k * C + rc[:, None]) * M + rm[None, :], mask=wmask, other=0.0)
        a_h = tl.sigmoid(tl.sum(w2[:, :, None] * y_h[None, :, :], axis=1)
                         + tl.load(b2_ptr + k * C + rc, mask=c_ok, other=0.0)[:, None])
        a_w = tl.sigmoid(tl.sum(w3[:, :, None] * y_w[None, :, :], axis=1)
                         + tl.load(b3_ptr + k * C + rc, mask=c_ok, other=0.0)[:, None])
        mean_h = tl.sum(tl.where((rs < H)[None, :], a_h, 0.0), axis=1) / H
        mean_w = tl.sum(tl.where((rs < W)[None, :], a_w, 0.0), axis=1) / W
        tl.store(pooled_ptr + row + rc, mean_h * mean_w, mask=c_ok)
        tl.store(ah_ptr + (row + rc[:, None]) * H + rs[None, :], a_h, mask=c_ok[:, None] & (rs < H)[None, :])
        tl.store(aw_ptr + (row + rc[:, None]) * W + rs[None, :], a_w, mask=c_ok[:, None] & (rs < W)[None, :])


@triton.jit
def _max_fusion_kernel(x_ptr, ah_ptr, aw_ptr, s_ptr, kl_ptr, bl_ptr, wfc_ptr, bfc_ptr, maps_ptr, out_ptr, logits_ptr,
                       C, H, W, NCLS, num_heads, sxb, sxc, sxh, sxw,
                       BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0)
    rs = tl.arange(0, BLOCK_S)
    hw_ok = (rs < H)[:, None] & (rs < W)[None, :]
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        c_ok = rc < C
        ok = c_ok[:, None, None] & hw_ok[None, :, :]
        fused = tl.full((BLOCK_C, BLOCK_S, BLOCK_S), float("-inf"), dtype=tl.float32)
        for k in range(num_heads):
            row = (b * num_heads + k) * C + rc
            a_h = tl.load(ah_ptr + row[:, None] * H + rs[None, :], mask=c_ok[:, None] & (rs < H)[None, :], other=0.0)
            a_w = tl.load(aw_ptr + row[:, None] * W + rs[None, :], mask=c_ok[:, None] & (rs < W)[None, :], other=0.0)
            s = tl.load(s_ptr + row, mask=c_ok, other=0.0)
            m = a_h[:, :, None] * (a_w * s[:, None])[:, None, :]
            tl.store(maps_ptr + (row[:, None, None] * H + rs[None, :, None]) * W + rs[None, None, :],
                     m.to(maps_ptr.dtype.element_ty), mask=ok)
            fused = tl.maximum(fused, m, propagate_nan=tl.PropagateNan.ALL)
        xt = tl.load(x_ptr + b * sxb + rc[:, None, None] * sxc + rs[None, :, None] * sxh + rs[None, None, :] * sxw,
                     mask=ok, other=0.0).to(tl.float32)
        kl = tl.load(kl_ptr + (rc[:, None, None] * H + rs[None, :, None]) * W + rs[None, None, :], mask=ok, other=0.0)
        out = tl.sum(tl.sum(tl.where(ok, kl * xt * fused, 0.0), axis=2), axis=1)
        tl.store(out_ptr + b * C + rc, out + tl.load(bl_ptr + rc, mask=c_ok, other=0.0), mask=c_ok)
    tl.debug_barrier()  # the sample's fused vector is complete before the classifier reads it
    for n0 in range(0, NCLS, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        logits = tl.load(bfc_ptr + rn, mask=rn < NCLS, other=0.0)
        for c0 in range(0, C, BLOCK_C):
            rc = c0 + tl.arange(0, BLOCK_C)
            v = tl.load(out_ptr + b * C + rc, mask=rc < C, other=0.0)
            wfc = tl.load(wfc_ptr + rn[:, None] * C + rc[None, :], mask=(rn[:, None] < NCLS) & (rc[None, :] < C),
                          other=0.0)
            logits += tl.sum(wfc * v[None, :], axis=1)
        tl.store(logits_ptr + b * NCLS + rn, logits.to(logits_ptr.dtype.element_ty), mask=rn < NCLS)


NAMES = ("kh", "bh", "kw", "bw", "w1", "b1", "w2", "b2", "w3", "b3", "s1", "s2", "kl", "bl", "wfc", "bfc")
RANKS = dict(zip(NAMES, (3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 3, 2, 1, 2, 1)))


def _check(x, weights, reference=False):
    f32 = (torch.float32, torch.float64) if reference else (torch.float32,)
    check_input("x", x, dim=4, dtypes=(torch.float32, torch.float16, torch.bfloat16) + f32)
    B, C, H, W = x.shape
    for name, t in weights.items():  # ranks first: the shapes below are read from w1, s1 and wfc
        check_input(name, t, dim=RANKS[name], device=x.device, dtypes=f32)
    K, M = weights["w1"].shape[:2]
    J, N = weights["s1"].shape[1], weights["wfc"].shape[0]
    expect_shapes({"kh": (K, C, W), "bh": (K, C), "kw": (K, C, H), "bw": (K, C), "w1": (K, M, C), "b1": (K, M),
                   "w2": (K, C, M), "b2": (K, C), "w3": (K, C, M), "b3": (K, C), "s1": (K, J, C), "s2": (K, C, J),
                   "kl": (C, H * W), "bl": (C,), "wfc": (N, C), "bfc": (N,)},
                  weights, f"for x {tuple(x.shape)} and {K} heads")
    return B, C, H, W, K, M, N


def mhan_heads_triton(x: Tensor, kh: Tensor, bh: Tensor, kw: Tensor, bw: Tensor, w1: Tensor, b1: Tensor,
                      w2: Tensor, b2: Tensor, w3: Tensor, b3: Tensor, s1: Tensor, s2: Tensor, kl: Tensor,
                      bl: Tensor, wfc: Tensor, bfc: Tensor, allow_tf32: bool = False) -> tuple[Tensor, Tensor]:
    """x: B×C×H×W after ELA (any strides, H and W at most 8); the folded weights as `_check`
    lists them (float32). Returns (logits B×N, maps B×K×C×H×W) in x's dtype."""
    weights = dict(zip(NAMES, (kh, bh, kw, bw, w1, b1, w2, b2, w3, b3, s1, s2, kl, bl, wfc, bfc)))
    B, C, H, W, K, M, N = _check(x, weights)
    if max(H, W) > MAX_SIDE or M > MAX_MIP:
        raise ValueError(f"mhan_heads: maps of at most {MAX_SIDE}×{MAX_SIDE} and {MAX_MIP} mixing channels, "
                         f"got {H}×{W} and {M}")
    kh, bh, kw, bw, w1, b1, w2, b2, w3, b3, s1, s2, kl, bl, wfc, bfc = (t.contiguous() for t in weights.values())
    f32 = dict(device=x.device, dtype=torch.float32)
    a_h, a_w = torch.empty((B, K, C, H), **f32), torch.empty((B, K, C, W), **f32)
    pooled = torch.empty((B, K, C, 1, 1), **f32)
    side = MAX_SIDE
    launch(_coordinate_kernel, (B, K), x, kh, bh, kw, bw, w1, b1, w2, b2, w3, b3, a_h, a_w, pooled,
           C, H, W, M, K, *x.stride(), BLOCK_C=BLOCK_C, BLOCK_M=max(16, triton.next_power_of_2(M)), BLOCK_S=side,
           num_warps=4)
    # SEDDA's squeeze-excite Linears have no biases: zeros for the op's
    s = squeeze_excite_triton(pooled, s1, torch.zeros((K, s1.shape[1]), **f32), s2, torch.zeros((K, C), **f32), "avg")
    maps = torch.empty((B, K, C, H, W), device=x.device, dtype=x.dtype)
    out = torch.empty((B, C), **f32)
    logits = torch.empty((B, N), device=x.device, dtype=x.dtype)
    launch(_max_fusion_kernel, (B,), x, a_h, a_w, s, kl, bl, wfc, bfc, maps, out, logits, C, H, W, N, K,
           *x.stride(), BLOCK_C=BLOCK_C, BLOCK_S=side, BLOCK_N=BLOCK_N, num_warps=4)
    return logits, maps


def _h_swish_torch(v):
    return v * (torch.nn.functional.relu6(v + 3) / 6)


def mhan_heads_reference(x, kh, bh, kw, bw, w1, b1, w2, b2, w3, b3, s1, s2, kl, bl, wfc, bfc):
    """The same math in torch ops, all K heads batched (float32, float64 for float64 inputs)."""
    weights = dict(zip(NAMES, (kh, bh, kw, bw, w1, b1, w2, b2, w3, b3, s1, s2, kl, bl, wfc, bfc)))
    B, C, H, W, K, M, N = _check(x, weights, reference=True)
    xf = x.to(kh.dtype)
    # the directional convs as products summed down the pixels of a channels-last view (B×H×W×C),
    # channels innermost: as einsums they were 512 tiny per-channel GEMMs, a select and a clone each
    # on a channels-last map (MHAN at batch 8 on the AVX-512 EPYC: 8.8 of the forward's 71 ms;
    # this form 0.44 ms, the same bits)
    xl = xf.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).unsqueeze(1)  # B×1×H×W×C
    x_h = (xl * kh.transpose(1, 2)[None, :, None]).sum(3).transpose(2, 3) + bh[:, :, None]  # B×K×C×H
    x_w = (xl * kw.transpose(1, 2)[None, :, :, None]).sum(2).transpose(2, 3) + bw[:, :, None]  # B×K×C×W
    y = _h_swish_torch(torch.einsum("bkcl,kmc->bkml", torch.cat([x_h, x_w], dim=3), w1) + b1[:, :, None])
    a_h = torch.sigmoid(torch.einsum("bkml,kcm->bkcl", y[..., :H], w2) + b2[:, :, None])
    a_w = torch.sigmoid(torch.einsum("bkml,kcm->bkcl", y[..., H:], w3) + b3[:, :, None])
    zeros = torch.zeros((), dtype=kh.dtype, device=x.device)
    s = torch.sigmoid(mlp(a_h.mean(3) * a_w.mean(3), s1, zeros, s2, zeros))  # GAP(a_h ⊗ a_w), separable
    maps = a_h.unsqueeze(4) * (a_w * s.unsqueeze(3)).unsqueeze(3)  # B×K×C×H×W
    out = ((xf * maps.amax(dim=1)).flatten(2) * kl).sum(2) + bl  # per channel: one dot over its pixels
    return torch.addmm(bfc, out, wfc.t()).to(x.dtype), maps.to(x.dtype)


def _flops(x, kh, bh, kw, bw, w1, b1, w2, b2, w3, b3, s1, s2, kl, bl, wfc, bfc):
    """Per head: the two depthwise convs, W1 on both directions, W2/W3, the SE MLP, the map; then
    the max, the depthwise fusion conv and fc."""
    B, C, H, W = x
    K, M = w1[:2]
    J = s1[1]
    per_head = 2 * C * H * W + M * C * (H + W) + C * M * (H + W) + 2 * J * C + 2 * C * H * W
    return B * (K * per_head + 2 * C * H * W + wfc[0] * C)


def _args(B, K, C, H, W, M, J, N, dtype=torch.float32, device="cpu", gen=None):
    def t(*shape, scale=1.0, dt=torch.float32):
        if gen is None:
            return torch.empty(shape, device=device, dtype=dt)
        return (scale * torch.randn(*shape, generator=gen)).to(device, dt)
    return (t(B, C, H, W, dt=dtype), t(K, C, W, scale=W ** -0.5), t(K, C, scale=0.1), t(K, C, H, scale=H ** -0.5),
            t(K, C, scale=0.1), t(K, M, C, scale=C ** -0.5), t(K, M, scale=0.1), t(K, C, M, scale=M ** -0.5),
            t(K, C, scale=0.1), t(K, C, M, scale=M ** -0.5), t(K, C, scale=0.1), t(K, J, C, scale=C ** -0.5),
            t(K, C, J, scale=J ** -0.5), t(C, H * W, scale=(H * W) ** -0.5), t(C, scale=0.1), t(N, C, scale=C ** -0.5),
            t(N))


def _domain():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for M in (16, 32, 64):  # BLOCK_M; the squeeze-excite's BLOCK_J follows J
            for J in (64, 128, 256):
                if M == 16 or J == 64:
                    yield _args(2, 2, 512, 7, 7, M, J, 7, dtype, "meta"), False


def _examples(gen):
    a = _args(3, 3, 40, 6, 5, 4, 8, 5, gen=gen)
    return [("mhan-batch1", _args(1, 4, 512, 7, 7, 16, 32, 7, gen=gen)),
            ("one-head-odd-20-classes", _args(2, 1, 72, 5, 7, 6, 5, 20, gen=gen)),
            ("channels_last", (a[0].contiguous(memory_format=torch.channels_last), *a[1:])),
            ("sliced", (torch.randn(3, 80, 6, 5, generator=gen)[:, ::2], *a[1:]))]


mhan_heads = declare("mhan_heads", triton=mhan_heads_triton, reference=mhan_heads_reference, flops=_flops,
                     domain=_domain, examples=_examples)
