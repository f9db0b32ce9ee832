"""Multi-scale spatial attention map of K heads in two GEMMs, the 3×3 output never stored.

For each head k (DAN, ../shared/spec/engine.md §2-4, weights already BN-folded and merged):
    y0_k  = W1_k · x + b1_k                     1×1 reduce, C → R channels
    z_k   = ReLU(conv3x3(y0_k; W3_k) + b3_k)    the merged 3×3 (+1×3 +3×1), R → O channels
    map_k = Σ_o z_k[o]                           channel sum: B×K×H×W
    (MACA-Net's gate instead: map_k = σ(Σ_o g_k[o]·z_k[o] + c_k), a weighted sum and a sigmoid)
Kernel 1 computes all K heads' 1×1 convs as one GEMM (pixels × C) @ (C × K·R), channels-last out.
Kernel 2 is an implicit GEMM per head over (pixels × 9·R) @ (9·R × O) whose epilogue adds the
bias, applies ReLU and sums over O in registers, writing only the K×H×W maps.
"""
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .compat import check_input, dot_precision
from .registry import declare, launch


@triton.jit
def _reduce_1x1_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, N, C, HW, W,
    sxb, sxc, sxh, sxw, swn, swc,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    # y[m, n] = Σ_c x[b, c, h, w] · w[n, c] + b[n], with m = (b, h, w) flattened; y is M×N row-major.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    img = rm // HW
    pix = rm % HW
    row = img * sxb + (pix // W) * sxh + (pix % W) * sxw  # any strides: NCHW, channels_last, views
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_K):
        rk = c0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_ptr + row[:, None] + rk[None, :] * sxc,
                    mask=(rm[:, None] < M) & (rk[None, :] < C), other=0.0)
        b = tl.load(w_ptr + rk[:, None] * swc + rn[None, :] * swn,
                    mask=(rk[:, None] < C) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _merged_3x3_map_kernel(
    y_ptr, w_ptr, b_ptr, map_ptr, gw_ptr, gb_ptr,
    M, HW, H, W, R, O, KR, num_heads,
    swk, swo, swr, swy, swx,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    GATE: tl.constexpr,
):
    # One program: BLOCK_M output pixels of one head, all O output channels in BLOCK_N chunks.
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    img = rm // HW
    pix = rm % HW
    h = pix // W
    w = pix % W
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for o0 in range(0, O, BLOCK_N):
        rn = o0 + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for tap in tl.static_range(9):
            hh = h + (tap // 3 - 1)
            ww = w + (tap % 3 - 1)
            # zero padding: taps that fall outside the image read nothing
            inside = (rm < M) & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            src = (img * HW + hh * W + ww) * KR + head * R
            for r0 in range(0, R, BLOCK_K):
                rk = r0 + tl.arange(0, BLOCK_K)
                a = tl.load(y_ptr + src[:, None] + rk[None, :],
                            mask=inside[:, None] & (rk[None, :] < R), other=0.0)
                b = tl.load(w_ptr + head * swk + rk[:, None] * swr + rn[None, :] * swo
                            + (tap // 3) * swy + (tap % 3) * swx,
                            mask=(rk[:, None] < R) & (rn[None, :] < O), other=0.0)
                acc = tl.dot(a, b, acc, input_precision=PRECISION)
        # epilogue: bias, ReLU (NaN kept, as torch.relu keeps it), sum over output channels
        acc += tl.load(b_ptr + head * O + rn, mask=rn < O, other=0.0)[None, :]
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
        if GATE:  # weighted channel sum (the gate's 1×1 conv to one channel)
            acc = acc * tl.load(gw_ptr + head * O + rn, mask=rn < O, other=0.0)[None, :]
        total += tl.sum(tl.where(rn[None, :] < O, acc, 0.0), axis=1)
    if GATE:
        total = tl.sigmoid(total + tl.load(gb_ptr + head))
    tl.store(map_ptr + (img * num_heads + head) * HW + pix, total, mask=rm < M)


# Block shapes per activation dtype. fp32 tiles are smaller: 64×64×32 fp32 with 3 stages stays
# far below the A100/H100 shared-memory limits; fp16/bf16 tiles are large enough for wgmma.
# Under the interpreter every tile is one numpy op, so the largest tiles run fastest.
CONFIGS = {
    "reduce_1x1": {
        torch.float32: dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
        torch.float16: dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3),
        torch.bfloat16: dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3),
        "interpret": dict(BLOCK_M=64, BLOCK_N=256, BLOCK_K=128, num_warps=4, num_stages=1),
    },
    "merged_3x3_map": {
        torch.float32: dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
        torch.float16: dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3),
        torch.bfloat16: dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3),
        "interpret": dict(BLOCK_M=64, BLOCK_N=256, BLOCK_K=128, num_warps=4, num_stages=1),
    },
}


def _config(kernel: str, x: torch.Tensor) -> dict:
    # CPU tensors run under the interpreter; CUDA (and the meta tensors of `_domain`) use the GPU table
    return dict(CONFIGS[kernel]["interpret" if x.device.type == "cpu" else x.dtype])


def _check(x, w1, b1, w3, b3, reference=False, gate_w=None, gate_b=None):
    # the kernels take fp32/fp16/bf16 activations with fp32 biases; the reference also float64
    act = (torch.float32, torch.float16, torch.bfloat16) + ((torch.float64,) if reference else ())
    bias = (torch.float32, torch.float64) if reference else (torch.float32,)
    check_input("x", x, dim=4, dtypes=act)
    device = x.device
    check_input("w1", w1, dim=2, device=device, dtypes=(x.dtype,))
    check_input("b1", b1, dim=1, device=device, dtypes=bias)
    check_input("w3", w3, dim=5, device=device, dtypes=(x.dtype,))
    check_input("b3", b3, dim=2, device=device, dtypes=bias)
    K, O, R, kh, kw = w3.shape
    C = x.shape[1]
    if (kh, kw) != (3, 3):
        raise ValueError(f"w3: expected K×O×R×3×3 merged kernels, got shape {tuple(w3.shape)}")
    if tuple(w1.shape) != (K * R, C):
        raise ValueError(f"w1: expected shape {(K * R, C)} (K·R × C for {K} heads, x with {C} channels), "
                         f"got {tuple(w1.shape)}")
    if b1.numel() != K * R or tuple(b3.shape) != (K, O):
        raise ValueError(f"biases: expected b1 of {K * R} and b3 of shape {(K, O)}, "
                         f"got {tuple(b1.shape)} and {tuple(b3.shape)}")
    if (gate_w is None) != (gate_b is None):
        raise ValueError("gate_w and gate_b go together")
    if gate_w is not None:
        check_input("gate_w", gate_w, dim=2, device=device, dtypes=bias)
        check_input("gate_b", gate_b, dim=1, device=device, dtypes=bias)
        if tuple(gate_w.shape) != (K, O) or tuple(gate_b.shape) != (K,):
            raise ValueError(f"gate: expected gate_w {(K, O)} and gate_b {(K,)}, "
                             f"got {tuple(gate_w.shape)} and {tuple(gate_b.shape)}")
    return K, O, R


def _output(out, shape, device):
    if out is None:
        return torch.empty(shape, device=device, dtype=torch.float32)
    if tuple(out.shape) != shape or out.dtype != torch.float32 or not out.is_contiguous() or out.device != device:
        raise ValueError(f"out: expected a contiguous float32 tensor of shape {shape} on {device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    return out


def spatial_attention_map_triton(x: Tensor, w1: Tensor, b1: Tensor, w3: Tensor, b3: Tensor,
                                 gate_w: Optional[Tensor] = None, gate_b: Optional[Tensor] = None,
                                 allow_tf32: bool = False, out=None) -> Tensor:
    """Launch the two kernels. x: B×C×H×W (any strides); w1: K·R×C; b1: K·R (fp32);
    w3: K×O×R×3×3 (any strides: the engine stores it tap-major for coalesced loads);
    b3: K×O (fp32); optional gate gate_w: K×O, gate_b: K (fp32). Returns the float32 maps,
    B×K×H×W (written into `out` if given)."""
    K, O, R = _check(x, w1, b1, w3, b3, gate_w=gate_w, gate_b=gate_b)
    gate = gate_w is not None
    if gate:
        gate_w, gate_b = gate_w.contiguous(), gate_b.contiguous()
    B, C, H, W = x.shape
    M, HW = B * H * W, H * W
    precision = dot_precision(x.dtype, allow_tf32)
    y0 = torch.empty((M, K * R), device=x.device, dtype=x.dtype)
    cfg = _config("reduce_1x1", x)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(K * R, cfg["BLOCK_N"]))
    launch(_reduce_1x1_kernel, grid,
           x, w1, b1, y0, M, K * R, C, HW, W,
           *x.stride(), w1.stride(0), w1.stride(1), PRECISION=precision, **cfg)
    maps = _output(out, (B, K, H, W), x.device)
    cfg = _config("merged_3x3_map", x)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), K)
    launch(_merged_3x3_map_kernel, grid,
           y0, w3, b3, maps, gate_w if gate else b3, gate_b if gate else b3,  # unread without GATE
           M, HW, H, W, R, O, K * R, K,
           w3.stride(0), w3.stride(1), w3.stride(2), w3.stride(3), w3.stride(4),
           PRECISION=precision, GATE=gate, **cfg)
    return maps


def spatial_attention_map_reference(x, w1, b1, w3, b3, gate_w=None, gate_b=None) -> torch.Tensor:
    """The same math in torch ops (the CPU backend and the tests' reference): one 1×1 conv for
    all heads, one grouped 3×3 conv (groups = heads), ReLU, channel sum (or the gate). Returns
    float32 maps (float64 for float64 inputs)."""
    K, O, R = _check(x, w1, b1, w3, b3, reference=True, gate_w=gate_w, gate_b=gate_b)
    B, C, H, W = x.shape
    y0 = F.conv2d(x, w1.reshape(K * R, C, 1, 1), b1.to(x.dtype))
    z = F.conv2d(y0, w3.reshape(K * O, R, 3, 3), b3.view(-1).to(x.dtype), padding=1, groups=K)
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    z = torch.relu(z).view(B, K, O, H, W).to(out_dtype)
    if gate_w is None:
        return z.sum(2)
    return torch.sigmoid(torch.einsum("bkohw,ko->bkhw", z, gate_w.to(out_dtype)) + gate_b.to(out_dtype).view(1, K, 1, 1))


def _flops(x, w1, b1, w3, b3, gate_w, gate_b):
    """The 1×1 GEMM of all heads, the merged 3×3 implicit GEMM and the gate's weighted sum."""
    B, C, H, W = x
    K, O, R = w3[:3]
    return B * H * W * (w1[0] * C + K * O * R * 9 + (K * O if gate_w is not None else 0))


def _weights(K, C, R, O, dtype=torch.float32, device="cpu", gen=None, gate=False):
    def t(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device, dt) if gen is not None \
            else torch.empty(shape, device=device, dtype=dt)
    w = (t(K * R, C), t(K * R, dt=torch.float32), t(K, O, R, 3, 3), t(K, O, dt=torch.float32))
    return w + ((t(K, O, dt=torch.float32), t(K, dt=torch.float32)) if gate else ())


def _domain():
    """Block sizes depend on the activation dtype only; the flags are TF32 and the gate."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for allow_tf32 in ((False, True) if dtype == torch.float32 else (False,)):
            for gate in (False, True):
                x = torch.empty((2, 512, 14, 14), device="meta", dtype=dtype)
                yield (x, *_weights(4, 512, 256, 512, dtype, "meta", gate=gate)), allow_tf32


def _examples(gen):
    x = torch.randn(3, 40, 9, 11, generator=gen)
    return [
        ("batch1-odd", (torch.randn(1, 24, 7, 5, generator=gen), *_weights(2, 24, 8, 24, gen=gen))),
        ("channels_last-gate", (x.to(memory_format=torch.channels_last), *_weights(3, 40, 16, 40, gen=gen, gate=True))),
        ("sliced", (x[:, :, 1:8, ::2], *_weights(1, 40, 16, 40, gen=gen))),
    ]


def _tap_major(w3):
    """K×O×R×3×3 stored as K×3×3×R×O (strides permuted back): a tile of output channels is one
    coalesced load in the 3×3 kernel."""
    return w3.permute(0, 3, 4, 2, 1).contiguous().permute(0, 4, 3, 1, 2)


spatial_attention_map = declare(
    "spatial_attention_map", triton=spatial_attention_map_triton, reference=spatial_attention_map_reference,
    flops=_flops, domain=_domain, examples=_examples, packed={"w3": _tap_major},
    fake=lambda x, w1, b1, w3, b3, gate_w=None, gate_b=None: x.new_empty(
        (x.shape[0], w3.shape[0], x.shape[2], x.shape[3]), dtype=torch.float32))
