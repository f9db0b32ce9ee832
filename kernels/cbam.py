"""CBAM: channel attention, then spatial attention, as three launches that never form x ⊙ ca.

    ca    = σ(MLP(GAP(x)) + MLP(GMP(x)))                the squeeze_excite op, pool="avg,max"
    stats = [mean_c(x ⊙ ca), max_c(x ⊙ ca)]             one program per (sample, pixel tile)
    sa    = σ(conv_k×k(stats) + b)                       computed where it is applied:
    out   = x ⊙ ca ⊗ sa                                  one program per (sample, pixel tile)
The k×k conv needs its neighbours' channel statistics, so the stats are the one intermediate
written (2 floats a pixel).
"""
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .compat import check_input
from .registry import declare, launch
from .squeeze_excite import args as se_args, squeeze_excite_reference, squeeze_excite_triton

CONFIG = dict(BLOCK_C=64, BLOCK_P=64, num_warps=4)


@triton.jit
def _channel_stats_kernel(x_ptr, ca_ptr, stats_ptr, C, HW, W, sxb, sxc, sxh, sxw,
                          BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    b = tl.program_id(0)
    rp = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = rp < HW
    total = tl.zeros((BLOCK_P,), dtype=tl.float32)
    top = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        ok = (rc[:, None] < C) & p_ok[None, :]
        xt = tl.load(x_ptr + b * sxb + rc[:, None] * sxc + (rp[None, :] // W) * sxh + (rp[None, :] % W) * sxw,
                     mask=ok, other=0.0).to(tl.float32)
        scaled = xt * tl.load(ca_ptr + b * C + rc, mask=rc < C, other=0.0)[:, None]
        total += tl.sum(scaled, axis=0)
        top = tl.maximum(top, tl.max(tl.where(ok, scaled, float("-inf")), axis=0), propagate_nan=tl.PropagateNan.ALL)
    tl.store(stats_ptr + (b * 2) * HW + rp, total / C, mask=p_ok)
    tl.store(stats_ptr + (b * 2 + 1) * HW + rp, top, mask=p_ok)


@triton.jit
def _spatial_gate_kernel(x_ptr, ca_ptr, stats_ptr, sw_ptr, sb_ptr, out_ptr, C, HW, H, W, KS, has_bias,
                         sxb, sxc, sxh, sxw, sob, soc, soh, sow,
                         BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    b = tl.program_id(0)
    rp = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = rp < HW
    h = rp // W
    w = rp % W
    pad = KS // 2
    acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for tap in range(KS * KS):  # same-padded k×k conv over the two statistics maps, once per pixel tile
        hh = h + tap // KS - pad
        ww = w + tap % KS - pad
        inside = p_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        mean = tl.load(stats_ptr + (b * 2) * HW + hh * W + ww, mask=inside, other=0.0)
        top = tl.load(stats_ptr + (b * 2 + 1) * HW + hh * W + ww, mask=inside, other=0.0)
        acc += mean * tl.load(sw_ptr + tap) + top * tl.load(sw_ptr + KS * KS + tap)
    if has_bias:
        acc += tl.load(sb_ptr)
    sa = tl.sigmoid(acc)
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        ok = (rc[:, None] < C) & p_ok[None, :]
        xt = tl.load(x_ptr + b * sxb + rc[:, None] * sxc + h[None, :] * sxh + w[None, :] * sxw,
                     mask=ok, other=0.0).to(tl.float32)
        ca = tl.load(ca_ptr + b * C + rc, mask=rc < C, other=0.0)
        out = xt * ca[:, None] * sa[None, :]
        tl.store(out_ptr + b * sob + rc[:, None] * soc + h[None, :] * soh + w[None, :] * sow,
                 out.to(out_ptr.dtype.element_ty), mask=ok)


def _check(x, w1, b1, w2, b2, spatial_w, spatial_b, reference=False):
    f32 = (torch.float32, torch.float64) if reference else (torch.float32,)
    check_input("x", x, dim=4, dtypes=(torch.float32, torch.float16, torch.bfloat16) + f32)
    check_input("spatial_w", spatial_w, dim=4, device=x.device, dtypes=f32)
    ks = spatial_w.shape[-1]
    if tuple(spatial_w.shape) != (1, 2, ks, ks) or ks % 2 == 0:
        raise ValueError(f"spatial_w: expected 1×2×k×k with odd k, got {tuple(spatial_w.shape)}")
    if spatial_b is not None:
        check_input("spatial_b", spatial_b, dim=1, device=x.device, dtypes=f32)
    if w1.shape[0] != 1:
        raise ValueError(f"CBAM has one channel MLP: expected w1 of 1×J×C, got {tuple(w1.shape)}")
    return ks


def cbam_triton(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, spatial_w: Tensor,
                spatial_b: Optional[Tensor] = None, allow_tf32: bool = False) -> Tensor:
    """x: B×C×H×W (any strides); the channel MLP as 1×J×C, 1×J, 1×C×J, 1×C float32 (zeros for
    absent biases); spatial_w 1×2×k×k, spatial_b 1 (optional). Returns CBAM(x) in x's dtype and
    layout."""
    ks = _check(x, w1, b1, w2, b2, spatial_w, spatial_b)
    B, C, H, W = x.shape
    ca = squeeze_excite_triton(x, w1, b1, w2, b2, "avg,max")  # B×1×C
    stats = torch.empty((B, 2, H, W), device=x.device, dtype=torch.float32)
    grid = (B, triton.cdiv(H * W, CONFIG["BLOCK_P"]))
    launch(_channel_stats_kernel, grid, x, ca, stats, C, H * W, W, *x.stride(), **CONFIG)
    out = torch.empty_like(x)  # x's layout where x is dense: channels_last stays channels_last
    sw = spatial_w.contiguous()
    launch(_spatial_gate_kernel, grid,
           x, ca, stats, sw, spatial_b if spatial_b is not None else sw, out, C, H * W, H, W, ks,
           int(spatial_b is not None), *x.stride(), *out.stride(), **CONFIG)
    return out


def cbam_reference(x, w1, b1, w2, b2, spatial_w, spatial_b=None):
    """The same math in torch ops (float32, float64 for float64 inputs), output in x's dtype."""
    ks = _check(x, w1, b1, w2, b2, spatial_w, spatial_b, reference=True)
    ca = squeeze_excite_reference(x, w1, b1, w2, b2, "avg,max")[:, 0, :, None, None]
    scaled = x.to(ca.dtype) * ca
    stats = torch.cat([scaled.mean(dim=1, keepdim=True), scaled.amax(dim=1, keepdim=True)], dim=1)
    sa = torch.sigmoid(F.conv2d(stats, spatial_w.to(ca.dtype),
                                None if spatial_b is None else spatial_b.to(ca.dtype), padding=ks // 2))
    return (scaled * sa).to(x.dtype)


def _flops(x, w1, b1, w2, b2, spatial_w, spatial_b):
    """Channel attention, the two channel statistics, the k×k conv per pixel, the product."""
    B, C, H, W = x
    J = w1[1]
    return B * (2 * C * H * W + 2 * 2 * J * C + 2 * C * H * W + 2 * spatial_w[-1] ** 2 * H * W + 2 * C * H * W)


def _args(B, C, J, H, W, ks, dtype=torch.float32, device="cpu", gen=None, bias=False):
    x, w1, b1, w2, b2, _ = se_args(B, 1, C, J, H, W, "avg,max", dtype, device, gen)
    sw = torch.empty((1, 2, ks, ks), device=device) if gen is None else torch.randn(1, 2, ks, ks, generator=gen) / ks
    sb = (torch.empty(1, device=device) if gen is None else torch.randn(1, generator=gen)) if bias else None
    return x, w1, b1, w2, b2, sw, sb


def _domain():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for J in (64, 128, 256):  # the channel attention's BLOCK_J
            yield _args(2, 2048, J, 7, 7, 7, dtype, "meta"), False


def _examples(gen):
    x = torch.randn(3, 80, 9, 7, generator=gen)
    return [("hafem-batch1", _args(1, 2048, 128, 7, 7, 7, gen=gen)),
            ("odd-bias-3x3", _args(2, 70, 5, 5, 3, 3, gen=gen, bias=True)),
            ("channels_last", (x.to(memory_format=torch.channels_last), *_args(3, 80, 8, 9, 7, 7, gen=gen)[1:])),
            ("sliced", (torch.randn(2, 160, 9, 7, generator=gen)[:, ::2], *_args(2, 80, 8, 9, 7, 5, gen=gen)[1:]))]


cbam = declare("cbam", triton=cbam_triton, reference=cbam_reference, flops=_flops, domain=_domain,
               examples=_examples)
