"""Efficient Local Attention (MHAN) in one launch: directional means, the shared depthwise Conv1d,
GroupNorm, sigmoid and the product, one program per (sample, channel group).

    m_h[c, h] = mean_w x[c, h, w],   m_w[c, w] = mean_h x[c, h, w]
    a_h = σ(GN(conv1d_k(m_h))),      a_w = σ(GN(conv1d_k(m_w)))   (GN statistics over a group's
                                                                    channels and positions, each
                                                                    direction on its own, as
                                                                    upstream calls GN twice)
    out = x · a_h[:, :, None] · a_w[:, None, :]
GroupNorm needs a whole group before it normalises, so the program sweeps its group three times
(mean, variance about the mean, output). x is small here (C×7×7), so a sweep costs a few loads.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .compat import check_input
from .registry import declare, launch

BLOCK_G = 16  # channels of a group per sweep step
# MHAN's maps are 7×7 (112-pixel faces; 14×14 at 224), and mhan_heads after ELA takes at most 8×8.
# A 32-wide tile compiled for 26-109 s per configuration ahead of time, for no map the family has.
MAX_SIDE = 16


@triton.jit
def _directional_convs(base, w_ptr, rc, c_ok, H, W, KS, sxc, sxh, sxw, BLOCK_S: tl.constexpr):
    """x's tile for channels rc and the depthwise conv of its two directional means: (x, conv_h, conv_w)."""
    rs = tl.arange(0, BLOCK_S)
    ok = c_ok[:, None, None] & (rs < H)[None, :, None] & (rs < W)[None, None, :]
    xt = tl.load(base + rc[:, None, None] * sxc + rs[None, :, None] * sxh + rs[None, None, :] * sxw,
                 mask=ok, other=0.0).to(tl.float32)
    m_h = tl.sum(xt, axis=2) / W  # zero past H: the conv's zero padding on that side
    m_w = tl.sum(xt, axis=1) / H
    # conv[c, l] = Σ_l' m[c, l'] · w[c, l' - l + pad]: the k taps gathered into an S×S band
    tap = rs[None, None, :] - rs[None, :, None] + KS // 2
    band = tl.load(w_ptr + rc[:, None, None] * KS + tap, mask=c_ok[:, None, None] & (tap >= 0) & (tap < KS), other=0.0)
    return xt, tl.sum(band * m_h[:, None, :], axis=2), tl.sum(band * m_w[:, None, :], axis=2)


@triton.jit
def _group_sums(base, w_ptr, g, CG, H, W, KS, sxc, sxh, sxw, shift_h, shift_w, SQUARE: tl.constexpr,
                BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr):
    """Σ (conv - shift) (or its square) over group g's channels and positions, per direction."""
    rs = tl.arange(0, BLOCK_S)
    acc_h = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc_w = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for c0 in range(0, CG, BLOCK_G):
        rg = c0 + tl.arange(0, BLOCK_G)
        c_ok = rg < CG
        _, ch, cw = _directional_convs(base, w_ptr, g * CG + rg, c_ok, H, W, KS, sxc, sxh, sxw, BLOCK_S)
        dh = tl.where(c_ok[:, None] & (rs < H)[None, :], ch - shift_h, 0.0)
        dw = tl.where(c_ok[:, None] & (rs < W)[None, :], cw - shift_w, 0.0)
        if SQUARE:
            dh = dh * dh
            dw = dw * dw
        acc_h += tl.sum(dh, axis=1)
        acc_w += tl.sum(dw, axis=1)
    return tl.sum(acc_h, axis=0), tl.sum(acc_w, axis=0)


@triton.jit
def _ela_kernel(x_ptr, w_ptr, gw_ptr, gb_ptr, out_ptr, H, W, KS, CG, eps,
                sxb, sxc, sxh, sxw, sob, soc, soh, sow,
                BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(0)
    g = tl.program_id(1)
    base = x_ptr + b * sxb
    rs = tl.arange(0, BLOCK_S)
    # GroupNorm's statistics, each direction on its own: the mean, then the variance about it
    sum_h, sum_w = _group_sums(base, w_ptr, g, CG, H, W, KS, sxc, sxh, sxw, 0.0, 0.0, False, BLOCK_G, BLOCK_S)
    mean_h = sum_h / (CG * H)
    mean_w = sum_w / (CG * W)
    var_h, var_w = _group_sums(base, w_ptr, g, CG, H, W, KS, sxc, sxh, sxw, mean_h, mean_w, True, BLOCK_G, BLOCK_S)
    rstd_h = 1.0 / tl.sqrt(var_h / (CG * H) + eps)
    rstd_w = 1.0 / tl.sqrt(var_w / (CG * W) + eps)
    for c0 in range(0, CG, BLOCK_G):
        rg = c0 + tl.arange(0, BLOCK_G)
        c_ok = rg < CG
        rc = g * CG + rg
        xt, ch, cw = _directional_convs(base, w_ptr, rc, c_ok, H, W, KS, sxc, sxh, sxw, BLOCK_S)
        gamma = tl.load(gw_ptr + rc, mask=c_ok, other=0.0)[:, None]
        beta = tl.load(gb_ptr + rc, mask=c_ok, other=0.0)[:, None]
        a_h = tl.sigmoid((ch - mean_h) * rstd_h * gamma + beta)
        a_w = tl.sigmoid((cw - mean_w) * rstd_w * gamma + beta)
        out = xt * a_h[:, :, None] * a_w[:, None, :]
        ok = c_ok[:, None, None] & (rs < H)[None, :, None] & (rs < W)[None, None, :]
        tl.store(out_ptr + b * sob + rc[:, None, None] * soc + rs[None, :, None] * soh + rs[None, None, :] * sow,
                 out.to(out_ptr.dtype.element_ty), mask=ok)


def _check(x, conv_w, gn_w, gn_b, groups, reference=False):
    f32 = (torch.float32, torch.float64) if reference else (torch.float32,)
    check_input("x", x, dim=4, dtypes=(torch.float32, torch.float16, torch.bfloat16) + f32)
    C = x.shape[1]
    check_input("conv_w", conv_w, dim=2, device=x.device, dtypes=f32)
    for name, t in (("gn_w", gn_w), ("gn_b", gn_b)):
        check_input(name, t, dim=1, device=x.device, dtypes=f32)
        if t.shape[0] != C:
            raise ValueError(f"{name}: expected {C} channels, got {tuple(t.shape)}")
    if conv_w.shape[0] != C or conv_w.shape[1] % 2 == 0:
        raise ValueError(f"conv_w: expected {C}×k with odd k (a same-padded depthwise Conv1d), got {tuple(conv_w.shape)}")
    if groups < 1 or C % groups:
        raise ValueError(f"groups: {groups} does not divide {C} channels")


def ela_triton(x: Tensor, conv_w: Tensor, gn_w: Tensor, gn_b: Tensor, groups: int, eps: float,
               allow_tf32: bool = False) -> Tensor:
    """x: B×C×H×W (any strides, H and W at most MAX_SIDE); conv_w: C×k; GroupNorm weight and bias C,
    `groups`, `eps`. Returns x · a_h · a_w in x's dtype."""
    _check(x, conv_w, gn_w, gn_b, groups)
    B, C, H, W = x.shape
    if max(H, W) > MAX_SIDE:
        raise ValueError(f"ela: maps of at most {MAX_SIDE}×{MAX_SIDE} in one program, got {H}×{W}")
    out = torch.empty_like(x)
    launch(_ela_kernel, (B, groups), x, conv_w.contiguous(), gn_w.contiguous(), gn_b.contiguous(), out,
           H, W, conv_w.shape[1], C // groups, float(eps), *x.stride(), *out.stride(),
           BLOCK_G=BLOCK_G, BLOCK_S=max(8, triton.next_power_of_2(max(H, W))), num_warps=4)
    return out


def ela_reference(x, conv_w, gn_w, gn_b, groups: int, eps: float):
    """The same math in torch ops (float32, float64 for float64 inputs), output in x's dtype."""
    _check(x, conv_w, gn_w, gn_b, groups, reference=True)
    C, k = conv_w.shape
    xf = x.to(conv_w.dtype)

    def attend(m):
        z = F.conv1d(m, conv_w.view(C, 1, k), padding=k // 2, groups=C)
        return torch.sigmoid(F.group_norm(z, groups, gn_w, gn_b, eps))

    return (xf * attend(xf.mean(dim=3)).unsqueeze(3) * attend(xf.mean(dim=2)).unsqueeze(2)).to(x.dtype)


def _flops(x, conv_w, gn_w, gn_b, groups, eps):
    """The two directional means, the k-tap conv on both, GroupNorm's affine, the product."""
    B, C, H, W = x
    k = conv_w[1]
    return B * C * (2 * H * W + k * (H + W) + 2 * (H + W) + 2 * H * W)


def _args(B, C, H, W, k, groups, dtype=torch.float32, device="cpu", gen=None):
    def t(*shape, dt=torch.float32, scale=1.0, shift=0.0):
        if gen is None:
            return torch.empty(shape, device=device, dtype=dt)
        return (shift + scale * torch.randn(*shape, generator=gen)).to(device, dt)
    return t(B, C, H, W, dt=dtype), t(C, k, scale=0.5), t(C, scale=0.2, shift=1.0), t(C, scale=0.1), groups, 1e-5


def _domain():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for side in (7, 14):  # every BLOCK_S: 8, 16
            yield _args(2, 512, side, side, 5, 32, dtype, "meta"), False


def _examples(gen):
    x = torch.randn(3, 48, 9, 6, generator=gen)
    return [("mhan-batch1", _args(1, 512, 7, 7, 5, 32, gen=gen)),
            ("odd-groups-of-40", _args(2, 120, 5, 11, 3, 3, gen=gen)),
            ("channels_last", (x.to(memory_format=torch.channels_last), *_args(3, 48, 9, 6, 7, 4, gen=gen)[1:])),
            ("sliced", (torch.randn(2, 96, 7, 7, generator=gen)[:, ::2], *_args(2, 48, 7, 7, 5, 16, gen=gen)[1:]))]


ela = declare("ela", triton=ela_triton, reference=ela_reference, flops=_flops, domain=_domain, examples=_examples)
