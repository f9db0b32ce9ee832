"""Squeeze-excite channel attention in one pass: pool x over its pixels, a two-layer MLP, sigmoid.

Per sample b and head k (weights K×J×C and K×C×J; BN folded into the first layer, zeros for
absent biases):
    mean_c, max_c = the mean and the max of x[b, (k,) c] over H×W
    MLP_k(p)      = W2_k · ReLU(W1_k · p + b1_k) + b2_k
    pool="avg"      g = σ(MLP_k(mean))              squeeze-excite (MHAN's SEDDA on pooled vectors)
    pool="avg+max"  g = σ(MLP_k(mean + max))        MACA-Net's channel attention
    pool="avg,max"  g = σ(MLP_k(mean) + MLP_k(max)) CBAM's channel attention
x is B×C×H×W, shared by the K heads, or B×K×C×H×W, one input per head. Returns the gates as
B×K×C float32. One program per (sample, head) reads its x once: a first sweep over channel tiles
pools them and accumulates the hidden layer; a second sweep over the tiles writes the gates.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from .compat import check_input
from .registry import declare, launch

POOLS = {"avg": 0, "avg+max": 1, "avg,max": 2}
MAX_HIDDEN = 256  # the hidden layer stays in registers between the sweeps
CONFIG = dict(BLOCK_C=64, BLOCK_P=64, num_warps=4)


@triton.jit
def _squeeze_excite_kernel(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, gate_ptr,
    C, HW, W, J, num_heads, pool,
    sxb, sxk, sxc, sxh, sxw,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr,
):
    b = tl.program_id(0)
    k = tl.program_id(1)
    rj = tl.arange(0, BLOCK_J)
    j_ok = rj < J
    base = x_ptr + b * sxb + k * sxk
    hidden_avg = tl.zeros((BLOCK_J,), dtype=tl.float32)
    hidden_max = tl.zeros((BLOCK_J,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        c_ok = rc < C
        total = tl.zeros((BLOCK_C,), dtype=tl.float32)
        top = tl.full((BLOCK_C,), float("-inf"), dtype=tl.float32)
        for p0 in range(0, HW, BLOCK_P):
            rp = p0 + tl.arange(0, BLOCK_P)
            ok = c_ok[:, None] & (rp[None, :] < HW)
            xt = tl.load(base + rc[:, None] * sxc + (rp[None, :] // W) * sxh + (rp[None, :] % W) * sxw,
                         mask=ok, other=0.0).to(tl.float32)
            total += tl.sum(xt, axis=1)
            top = tl.maximum(top, tl.max(tl.where(ok, xt, float("-inf")), axis=1), propagate_nan=tl.PropagateNan.ALL)
        mean = total / HW
        top = tl.where(c_ok, top, 0.0)
        w1 = tl.load(w1_ptr + (k * J + rj[:, None]) * C + rc[None, :], mask=j_ok[:, None] & c_ok[None, :], other=0.0)
        first = tl.where(pool == 1, mean + top, mean)
        hidden_avg += tl.sum(w1 * first[None, :], axis=1)
        if pool == 2:
            hidden_max += tl.sum(w1 * top[None, :], axis=1)
    b1 = tl.load(b1_ptr + k * J + rj, mask=j_ok, other=0.0)
    hidden = tl.maximum(hidden_avg + b1, 0.0, propagate_nan=tl.PropagateNan.ALL)
    if pool == 2:  # MLP(avg) + MLP(max) = W2·(h_avg + h_max) + 2·b2
        hidden += tl.maximum(hidden_max + b1, 0.0, propagate_nan=tl.PropagateNan.ALL)
    bias_times = tl.where(pool == 2, 2.0, 1.0)
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        c_ok = rc < C
        w2 = tl.load(w2_ptr + (k * C + rc[None, :]) * J + rj[:, None], mask=j_ok[:, None] & c_ok[None, :], other=0.0)
        g = tl.sum(w2 * hidden[:, None], axis=0) + bias_times * tl.load(b2_ptr + k * C + rc, mask=c_ok, other=0.0)
        tl.store(gate_ptr + (b * num_heads + k) * C + rc, tl.sigmoid(g), mask=c_ok)


def _check(x, w1, b1, w2, b2, pool, reference=False):
    f32 = (torch.float32, torch.float64) if reference else (torch.float32,)
    if x.dim() not in (4, 5):
        raise ValueError(f"x: expected B×C×H×W (shared by the heads) or B×K×C×H×W, got shape {tuple(x.shape)}")
    check_input("x", x, dim=x.dim(), dtypes=(torch.float32, torch.float16, torch.bfloat16) + f32)
    for name, t, dim in (("w1", w1, 3), ("b1", b1, 2), ("w2", w2, 3), ("b2", b2, 2)):
        check_input(name, t, dim=dim, device=x.device, dtypes=f32)
    K, J, C = w1.shape
    if x.shape[-3] != C or (x.dim() == 5 and x.shape[1] != K):
        raise ValueError(f"x: expected {C} channels{f' and {K} heads' if x.dim() == 5 else ''}, "
                         f"got shape {tuple(x.shape)}")
    if tuple(b1.shape) != (K, J) or tuple(w2.shape) != (K, C, J) or tuple(b2.shape) != (K, C):
        raise ValueError(f"squeeze-excite weights: expected b1 {(K, J)}, w2 {(K, C, J)}, b2 {(K, C)}, got "
                         f"{tuple(b1.shape)}, {tuple(w2.shape)}, {tuple(b2.shape)}")
    if pool not in POOLS:
        raise ValueError(f"pool: expected one of {sorted(POOLS)}, got {pool!r}")
    return K, J, C


def squeeze_excite_triton(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, pool: str,
                          allow_tf32: bool = False) -> Tensor:
    """The gates B×K×C (float32). `allow_tf32` is accepted for the op's common signature: no tl.dot here."""
    K, J, C = _check(x, w1, b1, w2, b2, pool)
    if J > MAX_HIDDEN:
        raise ValueError(f"squeeze_excite: at most {MAX_HIDDEN} hidden units, got {J}")
    w1, b1, w2, b2 = (t.contiguous() for t in (w1, b1, w2, b2))
    B, (H, W) = x.shape[0], x.shape[-2:]
    strides = x.stride() if x.dim() == 5 else (x.stride(0), 0, *x.stride()[1:])  # shared: head stride 0
    gates = torch.empty((B, K, C), device=x.device, dtype=torch.float32)
    launch(_squeeze_excite_kernel, (B, K), x, w1, b1, w2, b2, gates, C, H * W, W, J, K, POOLS[pool], *strides,
           BLOCK_J=max(64, triton.next_power_of_2(J)), **CONFIG)
    return gates


def mlp(p, w1, b1, w2, b2):
    """W2_k · ReLU(W1_k · p + b1_k) + b2_k for p of B×K×C: the torch form of the shared MLP."""
    hidden = torch.relu(torch.einsum("bkc,kjc->bkj", p, w1) + b1)
    return torch.einsum("bkj,kcj->bkc", hidden, w2) + b2


def squeeze_excite_reference(x, w1, b1, w2, b2, pool: str):
    """The same math in torch ops: float32 gates (float64 for float64 inputs)."""
    K, J, C = _check(x, w1, b1, w2, b2, pool, reference=True)
    xf = x.to(w1.dtype)
    mean, top = xf.mean(dim=(-2, -1)), xf.amax(dim=(-2, -1))
    if x.dim() == 4:  # shared by the heads
        mean, top = mean[:, None].expand(-1, K, -1), top[:, None].expand(-1, K, -1)
    if pool == "avg":
        return torch.sigmoid(mlp(mean, w1, b1, w2, b2))
    if pool == "avg+max":
        return torch.sigmoid(mlp(mean + top, w1, b1, w2, b2))
    return torch.sigmoid(mlp(mean, w1, b1, w2, b2) + mlp(top, w1, b1, w2, b2))


def _flops(x, w1, b1, w2, b2, pool):
    """Pooling reads (one add per element, two with the max), and the MLP once or twice per head."""
    K, J, C = w1
    B, HW = x[0], x[-1] * x[-2]
    stats = 1 if pool == "avg" else 2
    return B * K * (stats * C * HW + (2 if pool == "avg,max" else 1) * 2 * J * C)


def args(B, K, C, J, H, W, pool, dtype=torch.float32, device="cpu", gen=None, per_head=False):
    """Inputs of the op's shapes: random with `gen`, empty (for the meta device) without."""
    def t(*shape, dt=torch.float32, scale=1.0):
        if gen is None:
            return torch.empty(shape, device=device, dtype=dt)
        return (scale * torch.randn(*shape, generator=gen)).to(device, dt)
    x = t(B, K, C, H, W, dt=dtype) if per_head else t(B, C, H, W, dt=dtype)
    return x, t(K, J, C, scale=C ** -0.5), t(K, J, scale=0.1), t(K, C, J, scale=J ** -0.5), t(K, C, scale=0.1), pool


def _domain():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for J in (64, 128, 256):  # every BLOCK_J the launcher picks
            yield args(2, 1, 512, J, 7, 7, "avg", dtype, "meta"), False


def _examples(gen):
    x = torch.randn(3, 80, 9, 7, generator=gen)
    return [("batch1-avg", args(1, 4, 512, 32, 7, 7, "avg", gen=gen)),
            ("per-head-pooled-vectors", args(2, 3, 96, 16, 1, 1, "avg", gen=gen, per_head=True)),
            ("maca-avg+max-odd", args(3, 2, 72, 5, 5, 3, "avg+max", gen=gen)),
            ("cbam-avg,max-channels_last", (x.to(memory_format=torch.channels_last),
                                            *args(3, 1, 80, 8, 9, 7, "avg,max", gen=gen)[1:])),
            ("sliced-many-pixels", (torch.randn(2, 160, 13, 11, generator=gen)[:, ::2],
                                    *args(2, 2, 80, 24, 13, 11, "avg,max", gen=gen)[1:]))]


squeeze_excite = declare("squeeze_excite", triton=squeeze_excite_triton, reference=squeeze_excite_reference,
                         flops=_flops, domain=_domain, examples=_examples)
