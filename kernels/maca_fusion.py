"""MACA-Net's head fusion on pooled vectors, one program per sample.

Per head k (../shared/spec/engine.md; the in-head 1×1 `fuse` conv commutes with GAP):
    v_sa_k = (1/HW) Σ_p g_k[p] · x[:, p]          GAP(x ⊙ g_k), g_k the head's gate map
    v_ca_k = y_k ⊙ GAP(x)                          GAP(x ⊙ y_k), y_k its channel gates (squeeze_excite)
    head_k = Wa_k · v_sa_k + Wb_k · v_ca_k + b_k   GAP(fuse([x ⊙ g_k, x ⊙ y_k])) without the concat
then log_softmax over heads (K > 1), sum, classifier: head_fusion's tail. The pooled vectors go
through a small scratch buffer so each head's C×C products can stream their weights in tiles.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from .compat import check_input, expect_shapes
from .head_fusion import (BLOCK_C_MAX, MAX_HEADS, channel_block, fuse_heads_and_classify,
                          fuse_heads_and_classify_reference, outputs, pool_by_maps, pool_by_maps_reference)
from .registry import declare, launch

CONFIG = dict(BLOCK_K=MAX_HEADS, BLOCK_P=16, BLOCK_T=16, BLOCK_N=16, num_warps=8)


@triton.jit
def _maca_fusion_kernel(
    x_ptr, map_ptr, ca_ptr, wa_ptr, wb_ptr, bf_ptr, wfc_ptr, bfc_ptr, logits_ptr, heads_ptr, pooled_ptr,
    C, HW, W, NCLS, num_heads, log_softmax,
    sxb, sxc, sxh, sxw,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    rk = tl.arange(0, BLOCK_K)
    rc = tl.arange(0, BLOCK_C)
    chan_ok = rc < C
    ok = (rk[:, None] < num_heads) & chan_ok[None, :]
    v_sa, gap = pool_by_maps(x_ptr, map_ptr, b, C, HW, W, num_heads, sxb, sxc, sxh, sxw,
                             BLOCK_K, BLOCK_C, BLOCK_P, PRECISION)
    v_ca = tl.load(ca_ptr + (b * num_heads + rk[:, None]) * C + rc[None, :], mask=ok, other=0.0) * gap[None, :]
    # scratch: [v_sa; v_ca] of this sample, re-read below in tiles of input channels
    scratch = pooled_ptr + b * 2 * num_heads * C
    tl.store(scratch + rk[:, None] * C + rc[None, :], v_sa, mask=ok)
    tl.store(scratch + (num_heads + rk[:, None]) * C + rc[None, :], v_ca, mask=ok)
    tl.debug_barrier()  # the whole program's stores are visible before any thread reads them back
    heads = tl.zeros((BLOCK_K, BLOCK_C), dtype=tl.float32)
    for k in range(num_heads):
        acc = tl.load(bf_ptr + k * C + rc, mask=chan_ok, other=0.0)
        for t0 in range(0, C, BLOCK_T):
            rt = t0 + tl.arange(0, BLOCK_T)
            t_ok = rt < C
            wmask = chan_ok[:, None] & t_ok[None, :]
            a = tl.load(scratch + k * C + rt, mask=t_ok, other=0.0)
            c = tl.load(scratch + (num_heads + k) * C + rt, mask=t_ok, other=0.0)
            wa = tl.load(wa_ptr + (k * C + rc[:, None]) * C + rt[None, :], mask=wmask, other=0.0)
            wb = tl.load(wb_ptr + (k * C + rc[:, None]) * C + rt[None, :], mask=wmask, other=0.0)
            acc += tl.sum(wa * a[None, :] + wb * c[None, :], axis=1)
        heads = tl.where(rk[:, None] == k, acc[None, :], heads)
    fuse_heads_and_classify(heads, b, C, NCLS, num_heads, log_softmax, wfc_ptr, bfc_ptr, logits_ptr, heads_ptr,
                            BLOCK_K, BLOCK_C, BLOCK_N)


def _check(x, maps, ca, wa, wb, bf, wfc, bfc, reference=False):
    f32 = (torch.float32, torch.float64) if reference else (torch.float32,)
    check_input("x", x, dim=4, dtypes=(torch.float32, torch.float16, torch.bfloat16) + f32)
    B, C, H, W = x.shape
    tensors = {"maps": maps, "ca": ca, "wa": wa, "wb": wb, "bf": bf, "wfc": wfc, "bfc": bfc}
    for name, dim in (("maps", 4), ("ca", 3), ("wa", 3), ("wb", 3), ("bf", 2), ("wfc", 2), ("bfc", 1)):
        check_input(name, tensors[name], dim=dim, device=x.device, dtypes=f32)
    K, N = maps.shape[1], wfc.shape[0]
    expect_shapes({"maps": (B, K, H, W), "ca": (B, K, C), "wa": (K, C, C), "wb": (K, C, C), "bf": (K, C),
                   "wfc": (N, C), "bfc": (N,)}, tensors, f"for x {tuple(x.shape)} and {K} heads")
    return B, C, H, W, K, N


def maca_fusion_triton(x: Tensor, maps: Tensor, ca: Tensor, wa: Tensor, wb: Tensor, bf: Tensor, wfc: Tensor,
                       bfc: Tensor, log_softmax: bool, allow_tf32: bool = False) -> tuple[Tensor, Tensor]:
    """x: B×C×H×W (any strides); maps: the K gate maps B×K×H×W; ca: the channel gates B×K×C;
    wa, wb: K×C×C (the fuse conv's halves), bf: K×C; classifier wfc N×C, bfc N (all float32).
    Returns (logits B×N, heads B×K×C) in x's dtype."""
    B, C, H, W, K, N = _check(x, maps, ca, wa, wb, bf, wfc, bfc)
    if C > BLOCK_C_MAX or K > MAX_HEADS:
        raise ValueError(f"maca_fusion: at most {BLOCK_C_MAX} channels and {MAX_HEADS} heads in one pass, "
                         f"got {C} channels and {K} heads")
    maps, ca, wa, wb, bf, wfc, bfc = (t.contiguous() for t in (maps, ca, wa, wb, bf, wfc, bfc))
    logits, heads = outputs(None, ((B, N), (B, K, C)), x)
    pooled = torch.empty((B, 2, K, C), device=x.device, dtype=torch.float32)
    launch(_maca_fusion_kernel, (B,), x, maps, ca, wa, wb, bf, wfc, bfc, logits, heads, pooled,
           C, H * W, W, N, K, int(bool(log_softmax)), *x.stride(),
           BLOCK_C=channel_block(C), PRECISION="ieee", **CONFIG)
    return logits, heads


def maca_fusion_reference(x, maps, ca, wa, wb, bf, wfc, bfc, log_softmax: bool):
    """The same math in torch ops (float32, float64 for float64 inputs); outputs in x's dtype."""
    B, C, H, W, K, N = _check(x, maps, ca, wa, wb, bf, wfc, bfc, reference=True)
    v_sa, gap = pool_by_maps_reference(x, maps)
    v_ca = ca * gap[:, None, :]
    heads = torch.einsum("bkc,koc->bko", v_sa, wa) + torch.einsum("bkc,koc->bko", v_ca, wb) + bf
    return fuse_heads_and_classify_reference(heads, wfc, bfc, log_softmax, x.dtype)


def _flops(x, maps, ca, wa, wb, bf, wfc, bfc, log_softmax):
    """Pooling by the gate maps and the mean, the two C×C products per head, the classifier."""
    B, C, H, W = x
    K = maps[1]
    return B * ((K + 1) * C * H * W + 2 * K * C * C + wfc[0] * C)


def _args(B, K, C, N, H, W, dtype=torch.float32, device="cpu", gen=None):
    def t(*shape, dt=torch.float32, scale=1.0):
        if gen is None:
            return torch.empty(shape, device=device, dtype=dt)
        return (scale * torch.randn(*shape, generator=gen)).to(device, dt)
    maps = torch.sigmoid(t(B, K, H, W)) if gen is not None else t(B, K, H, W)
    ca = torch.sigmoid(t(B, K, C)) if gen is not None else t(B, K, C)
    return (t(B, C, H, W, dt=dtype), maps, ca, t(K, C, C, scale=C ** -0.5), t(K, C, C, scale=C ** -0.5),
            t(K, C, scale=0.1), t(N, C, scale=C ** -0.5), t(N), K > 1)


def _domain():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for C in (256, BLOCK_C_MAX):  # every BLOCK_C channel_block picks
            yield _args(2, 4, C, 7, 7, 7, dtype, "meta"), False


def _examples(gen):
    a = _args(3, 3, 96, 5, 9, 7, gen=gen)
    return [("batch1", _args(1, 4, 512, 7, 7, 7, gen=gen)),
            ("one-head-odd-20-classes", _args(2, 1, 72, 20, 5, 3, gen=gen)),
            ("channels_last", (a[0].contiguous(memory_format=torch.channels_last), *a[1:])),
            ("sliced", (torch.randn(3, 192, 9, 7, generator=gen)[:, ::2], *a[1:]))]


maca_fusion = declare("maca_fusion", triton=maca_fusion_triton, reference=maca_fusion_reference, flops=_flops,
                      domain=_domain, examples=_examples)
