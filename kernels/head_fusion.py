"""Pooling, squeeze-excite channel attention, head log-softmax fusion and classifier in one pass.

Per sample (DAN, ../shared/spec/engine.md §5-6; weights BN-folded):
    v_k      = (1/HW) Σ_p x[:, p] · map_k[p]          GAP(x ⊙ map_k) without forming x ⊙ map_k
    g_k      = σ(W2_k · ReLU(W1_k · v_k + b1_k) + b2_k)  the head's squeeze-excite MLP
    head_k   = v_k ⊙ g_k
    heads    = log_softmax over k (only when K > 1, as DAN does)
    logits   = Wfc · Σ_k heads_k + bfc                   fc with the final BatchNorm1d folded
One program per sample reads x once and writes the K×C heads and the logits.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from .compat import check_input, expect_shapes
from .registry import declare, launch
from .squeeze_excite import mlp


@triton.jit
def pool_by_maps(x_ptr, map_ptr, b, C, HW, W, num_maps, sxb, sxc, sxh, sxw,
                 BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr):
    """v[k, c] = (1/HW) Σ_p map[b, k, p] · x[b, c, p] and the plain mean GAP(x)[c], x read once:
    a (K × P) @ (P × C) product over pixel tiles. Shared with MACA-Net's fusion."""
    rk = tl.arange(0, BLOCK_K)
    rc = tl.arange(0, BLOCK_C)
    v = tl.zeros((BLOCK_K, BLOCK_C), dtype=tl.float32)
    total = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        rp = p0 + tl.arange(0, BLOCK_P)
        m = tl.load(map_ptr + (b * num_maps + rk[:, None]) * HW + rp[None, :],
                    mask=(rk[:, None] < num_maps) & (rp[None, :] < HW), other=0.0)
        xt = tl.load(x_ptr + b * sxb + rc[None, :] * sxc + (rp[:, None] // W) * sxh + (rp[:, None] % W) * sxw,
                     mask=(rp[:, None] < HW) & (rc[None, :] < C), other=0.0).to(tl.float32)
        v = tl.dot(m, xt, v, input_precision=PRECISION)
        total += tl.sum(xt, axis=0)
    return v / HW, total / HW


@triton.jit
def fuse_heads_and_classify(heads, b, C, NCLS, num_heads, log_softmax, wfc_ptr, bfc_ptr, logits_ptr, heads_ptr,
                            BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """The family's fusion tail on the K×C head vectors of sample b: log_softmax over heads (when
    asked), store the heads, sum them, classifier. Shared with MACA-Net's fusion."""
    rk = tl.arange(0, BLOCK_K)
    rc = tl.arange(0, BLOCK_C)
    head_ok = rk[:, None] < num_heads
    chan_ok = rc < C
    if log_softmax:  # a runtime flag: one configuration with and without
        masked = tl.where(head_ok, heads, float("-inf"))
        top = tl.max(masked, axis=0)
        lse = top + tl.log(tl.sum(tl.exp(masked - top[None, :]), axis=0))
        heads = heads - lse[None, :]
    heads = tl.where(head_ok, heads, 0.0)
    tl.store(heads_ptr + (b * num_heads + rk[:, None]) * C + rc[None, :],
             heads.to(heads_ptr.dtype.element_ty), mask=head_ok & chan_ok[None, :])
    pooled = tl.sum(heads, axis=0)
    for n0 in range(0, NCLS, BLOCK_N):  # classes in tiles: any number of classes, one configuration
        rn = n0 + tl.arange(0, BLOCK_N)
        wfc = tl.load(wfc_ptr + rn[:, None] * C + rc[None, :], mask=(rn[:, None] < NCLS) & chan_ok[None, :],
                      other=0.0)
        logits = tl.sum(wfc * pooled[None, :], axis=1) + tl.load(bfc_ptr + rn, mask=rn < NCLS, other=0.0)
        tl.store(logits_ptr + b * NCLS + rn, logits.to(logits_ptr.dtype.element_ty), mask=rn < NCLS)


@triton.jit
def squeeze_excite_gate(v, w1_ptr, b1_ptr, w2_ptr, b2_ptr, k, C, J,
                        BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr):
    """σ(W2_k · ReLU(W1_k · v + b1_k) + b2_k) for one vector v of C channels; the hidden layer in
    tiles of BLOCK_J (ReLU is elementwise, so each tile's share of W2·h adds up exactly)."""
    rc = tl.arange(0, BLOCK_C)
    chan_ok = rc < C
    g = tl.load(b2_ptr + k * C + rc, mask=chan_ok, other=0.0)
    for j0 in range(0, J, BLOCK_J):
        rj = j0 + tl.arange(0, BLOCK_J)
        wmask = (rj[:, None] < J) & chan_ok[None, :]
        w1 = tl.load(w1_ptr + (k * J + rj[:, None]) * C + rc[None, :], mask=wmask, other=0.0)
        h = tl.sum(w1 * v[None, :], axis=1) + tl.load(b1_ptr + k * J + rj, mask=rj < J, other=0.0)
        h = tl.maximum(h, 0.0, propagate_nan=tl.PropagateNan.ALL)
        w2 = tl.load(w2_ptr + (k * C + rc[None, :]) * J + rj[:, None], mask=wmask, other=0.0)
        g += tl.sum(w2 * h[:, None], axis=0)
    return tl.sigmoid(g)


@triton.jit
def _head_fusion_kernel(
    x_ptr, map_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, wfc_ptr, bfc_ptr, logits_ptr, heads_ptr,
    C, HW, W, J, NCLS, num_heads, log_softmax,
    sxb, sxc, sxh, sxw,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_J: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    rk = tl.arange(0, BLOCK_K)
    v, _ = pool_by_maps(x_ptr, map_ptr, b, C, HW, W, num_heads, sxb, sxc, sxh, sxw,
                        BLOCK_K, BLOCK_C, BLOCK_P, PRECISION)
    heads = tl.zeros((BLOCK_K, BLOCK_C), dtype=tl.float32)
    for k in range(num_heads):  # a runtime loop: one configuration serves any number of heads
        vk = tl.sum(tl.where(rk[:, None] == k, v, 0.0), axis=0)
        gk = squeeze_excite_gate(vk, w1_ptr, b1_ptr, w2_ptr, b2_ptr, k, C, J, BLOCK_C, BLOCK_J)
        heads = tl.where(rk[:, None] == k, (vk * gk)[None, :], heads)
    fuse_heads_and_classify(heads, b, C, NCLS, num_heads, log_softmax, wfc_ptr, bfc_ptr, logits_ptr, heads_ptr,
                            BLOCK_K, BLOCK_C, BLOCK_N)


# every channel of a sample stays in registers between the pooling and the MLP; the family's trunks
# end in 512 channels. A 1024-channel tile compiled for 65-82 s per configuration (a 16×1024 fp32
# tile twice over: ptxas spills), doubling ahead-of-time compilation for no network we know.
BLOCK_C_MAX = 512
MAX_HEADS = 16  # tl.dot needs at least 16 rows, so the head axis is one 16-row tile
# the launcher's whole config table: BLOCK_C is the channel count's power of two (at least 256),
# everything else is fixed or a runtime argument, so the AOT list is dtype × BLOCK_C. The pooling
# dot stays IEEE even where TF32 is allowed: a K×HW by HW×C product per sample gains nothing from it.
CONFIG = dict(BLOCK_K=MAX_HEADS, BLOCK_P=16, BLOCK_J=32, BLOCK_N=16, num_warps=8)


def _check(x, maps, w1, b1, w2, b2, wfc, bfc, reference=False):
    # the kernel takes fp32/fp16/bf16 x with fp32 maps and weights; the reference also float64
    f32 = (torch.float32, torch.float64) if reference else (torch.float32,)
    check_input("x", x, dim=4, dtypes=(torch.float32, torch.float16, torch.bfloat16) + f32)
    B, C, H, W = x.shape
    check_input("maps", maps, dim=4, device=x.device, dtypes=f32)
    for name, t, dim in (("w1", w1, 3), ("b1", b1, 2), ("w2", w2, 3), ("b2", b2, 2), ("wfc", wfc, 2), ("bfc", bfc, 1)):
        check_input(name, t, dim=dim, device=x.device, dtypes=f32)
    K, J, N = maps.shape[1], w1.shape[1], wfc.shape[0]
    expect_shapes({"maps": (B, K, H, W), "w1": (K, J, C), "b1": (K, J), "w2": (K, C, J), "b2": (K, C),
                   "wfc": (N, C), "bfc": (N,)},
                  {"maps": maps, "w1": w1, "b1": b1, "w2": w2, "b2": b2, "wfc": wfc, "bfc": bfc},
                  f"for x {tuple(x.shape)} and {K} heads")
    return B, C, H, W, K, J, N


def head_fusion_triton(x: Tensor, maps: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, wfc: Tensor,
                       bfc: Tensor, log_softmax: bool, allow_tf32: bool = False, out=None) -> tuple[Tensor, Tensor]:
    """x: B×C×H×W (any strides), maps: B×K×H×W float32, SE weights w1 K×J×C, b1 K×J, w2 K×C×J,
    b2 K×C, classifier wfc N×C, bfc N (all float32). Returns (logits B×N, heads B×K×C) in x's
    dtype, written into `out` = (logits, heads) if given."""
    B, C, H, W, K, J, N = _check(x, maps, w1, b1, w2, b2, wfc, bfc)
    if C > BLOCK_C_MAX or K > MAX_HEADS:
        raise ValueError(f"head_fusion: at most {BLOCK_C_MAX} channels and {MAX_HEADS} heads in one pass, "
                         f"got {C} channels and {K} heads")
    maps, w1, b1, w2, b2, wfc, bfc = (t.contiguous() for t in (maps, w1, b1, w2, b2, wfc, bfc))
    logits, heads = outputs(out, ((B, N), (B, K, C)), x)
    launch(_head_fusion_kernel, (B,),
           x, maps, w1, b1, w2, b2, wfc, bfc, logits, heads,
           C, H * W, W, J, N, K, int(bool(log_softmax)), *x.stride(),
           BLOCK_C=channel_block(C),
           PRECISION="ieee", **CONFIG)
    return logits, heads


def channel_block(C: int) -> int:
    """Every channel of a sample in one register tile: the count's power of two, at least 256
    (two configurations in all)."""
    return max(256, triton.next_power_of_2(C))


def outputs(out, shapes, x):
    """Output tensors in x's dtype: new ones, or the caller's `out` after checking them."""
    if out is None:
        return tuple(torch.empty(s, device=x.device, dtype=x.dtype) for s in shapes)
    for i, (t, shape) in enumerate(zip(out, shapes)):
        if tuple(t.shape) != shape or t.dtype != x.dtype or not t.is_contiguous() or t.device != x.device:
            raise ValueError(f"out[{i}]: expected a contiguous {x.dtype} tensor of shape {shape} on {x.device}, "
                             f"got {t.dtype} {tuple(t.shape)} on {t.device}")
    return tuple(out)


def head_fusion_reference(x, maps, w1, b1, w2, b2, wfc, bfc, log_softmax: bool):
    """The same math in torch ops, computed in float32 (float64 for float64 inputs): the CPU
    backend and the tests' reference."""
    B, C, H, W, K, J, N = _check(x, maps, w1, b1, w2, b2, wfc, bfc, reference=True)
    v, _ = pool_by_maps_reference(x, maps)
    heads = v * torch.sigmoid(mlp(v, w1, b1, w2, b2))
    return fuse_heads_and_classify_reference(heads, wfc, bfc, log_softmax, x.dtype)


def pool_by_maps_reference(x, maps):
    """pool_by_maps in torch ops: (v B×K×C, GAP(x) B×C) in the maps' dtype."""
    B, C, H, W = x.shape
    xf = x.to(maps.dtype).reshape(B, C, H * W)
    return torch.bmm(maps.reshape(B, -1, H * W), xf.transpose(1, 2)) / (H * W), xf.mean(2)


def fuse_heads_and_classify_reference(heads, wfc, bfc, log_softmax: bool, dtype):
    """fuse_heads_and_classify in torch ops: (logits, heads) in `dtype`."""
    if log_softmax:
        heads = torch.log_softmax(heads, dim=1)
    logits = torch.addmm(bfc, heads.sum(1), wfc.t())
    return logits.to(dtype), heads.to(dtype)


def _flops(x, maps, w1, b1, w2, b2, wfc, bfc, log_softmax):
    """Pooling by the maps (K·C·HW), the squeeze-excite MLP (2·K·J·C), the classifier (N·C)."""
    B, C, H, W = x
    K, J = w1[:2]
    return B * (K * C * H * W + 2 * K * J * C + wfc[0] * C)


def _args(B, K, C, J, N, H, W, dtype=torch.float32, device="cpu", gen=None):
    def t(*shape, dt=torch.float32, scale=1.0):
        if gen is None:
            return torch.empty(shape, device=device, dtype=dt)
        return (scale * torch.randn(*shape, generator=gen)).to(device, dt)
    maps = t(B, K, H, W).abs() * 10 if gen is not None else t(B, K, H, W)  # ReLU'd sums: non-negative
    return (t(B, C, H, W, dt=dtype), maps, t(K, J, C, scale=C ** -0.5), t(K, J, scale=0.1),
            t(K, C, J, scale=J ** -0.5), t(K, C, scale=0.1), t(N, C, scale=C ** -0.5), t(N), K > 1)


def _domain():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for C in (256, BLOCK_C_MAX):  # every BLOCK_C channel_block picks
            yield _args(2, 4, C, C // 16, 7, 7, 7, dtype, "meta"), False


def _examples(gen):
    x = torch.randn(3, 96, 9, 7, generator=gen)
    a = _args(3, 3, 96, 12, 5, 9, 7, gen=gen)
    return [("batch1", _args(1, 4, 512, 32, 7, 7, 7, gen=gen)),
            ("odd-one-head-40-classes", _args(2, 1, 72, 40, 40, 5, 3, gen=gen)),
            ("channels_last", (x.to(memory_format=torch.channels_last), *a[1:])),
            ("sliced", (torch.randn(3, 192, 9, 7, generator=gen)[:, ::2], *a[1:]))]


dan_head_fusion = declare("dan_head_fusion", triton=head_fusion_triton, reference=head_fusion_reference,
                          flops=_flops, domain=_domain, examples=_examples)
