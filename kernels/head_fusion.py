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

from .compat import check_input, dot_precision


@triton.jit
def _head_fusion_kernel(
    x_ptr, map_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, wfc_ptr, bfc_ptr, logits_ptr, heads_ptr,
    C, HW, W, J, NCLS, inv_hw,
    sxb, sxc, sxh, sxw,
    NUM_HEADS: tl.constexpr, LOG_SOFTMAX: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr,
    BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    rk = tl.arange(0, BLOCK_K)
    rc = tl.arange(0, BLOCK_C)
    rj = tl.arange(0, BLOCK_J)
    head_ok = rk[:, None] < NUM_HEADS
    chan_ok = rc < C

    # v[k, c] = Σ_p map[k, p] · x[c, p]: a (K × P) @ (P × C) product, x read once
    v = tl.zeros((BLOCK_K, BLOCK_C), dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        rp = p0 + tl.arange(0, BLOCK_P)
        m = tl.load(map_ptr + (b * NUM_HEADS + rk[:, None]) * HW + rp[None, :],
                    mask=head_ok & (rp[None, :] < HW), other=0.0)
        xt = tl.load(x_ptr + b * sxb + rc[None, :] * sxc + (rp[:, None] // W) * sxh + (rp[:, None] % W) * sxw,
                     mask=(rp[:, None] < HW) & chan_ok[None, :], other=0.0)
        v = tl.dot(m, xt.to(tl.float32), v, input_precision=PRECISION)
    v = v * inv_hw

    heads = tl.zeros((BLOCK_K, BLOCK_C), dtype=tl.float32)
    wmask = (rj[:, None] < J) & chan_ok[None, :]
    for k in tl.static_range(NUM_HEADS):
        vk = tl.sum(tl.where(rk[:, None] == k, v, 0.0), axis=0)
        w1 = tl.load(w1_ptr + (k * J + rj[:, None]) * C + rc[None, :], mask=wmask, other=0.0)
        hk = tl.sum(w1 * vk[None, :], axis=1) + tl.load(b1_ptr + k * J + rj, mask=rj < J, other=0.0)
        hk = tl.maximum(hk, 0.0, propagate_nan=tl.PropagateNan.ALL)
        w2 = tl.load(w2_ptr + (k * C + rc[None, :]) * J + rj[:, None], mask=wmask, other=0.0)
        gk = tl.sum(w2 * hk[:, None], axis=0) + tl.load(b2_ptr + k * C + rc, mask=chan_ok, other=0.0)
        gk = tl.sigmoid(gk)
        heads = tl.where(rk[:, None] == k, (vk * gk)[None, :], heads)

    if LOG_SOFTMAX:
        masked = tl.where(head_ok, heads, float("-inf"))
        top = tl.max(masked, axis=0)
        lse = top + tl.log(tl.sum(tl.exp(masked - top[None, :]), axis=0))
        heads = heads - lse[None, :]
    heads = tl.where(head_ok, heads, 0.0)
    tl.store(heads_ptr + (b * NUM_HEADS + rk[:, None]) * C + rc[None, :],
             heads.to(heads_ptr.dtype.element_ty), mask=head_ok & chan_ok[None, :])

    pooled = tl.sum(heads, axis=0)
    rn = tl.arange(0, BLOCK_N)
    wfc = tl.load(wfc_ptr + rn[:, None] * C + rc[None, :], mask=(rn[:, None] < NCLS) & chan_ok[None, :], other=0.0)
    logits = tl.sum(wfc * pooled[None, :], axis=1) + tl.load(bfc_ptr + rn, mask=rn < NCLS, other=0.0)
    tl.store(logits_ptr + b * NCLS + rn, logits.to(logits_ptr.dtype.element_ty), mask=rn < NCLS)


BLOCK_C_MAX = 1024  # every channel of a sample stays in registers between the pooling and the MLP


def _check(x, maps, w1, b1, w2, b2, wfc, bfc, reference=False):
    # the kernel takes fp32/fp16/bf16 x with fp32 maps and weights; the reference also float64
    f32 = (torch.float32, torch.float64) if reference else (torch.float32,)
    check_input("x", x, dim=4, dtypes=(torch.float32, torch.float16, torch.bfloat16) + f32)
    B, C, H, W = x.shape
    check_input("maps", maps, dim=4, device=x.device, dtypes=f32)
    K = maps.shape[1]
    if tuple(maps.shape) != (B, K, H, W):
        raise ValueError(f"maps: expected shape {(B, K, H, W)} to match x {tuple(x.shape)}, got {tuple(maps.shape)}")
    for name, t, dim in (("w1", w1, 3), ("b1", b1, 2), ("w2", w2, 3), ("b2", b2, 2), ("wfc", wfc, 2), ("bfc", bfc, 1)):
        check_input(name, t, dim=dim, device=x.device, dtypes=f32)
    J = w1.shape[1]
    N = wfc.shape[0]
    expected = {"w1": (K, J, C), "b1": (K, J), "w2": (K, C, J), "b2": (K, C), "wfc": (N, C), "bfc": (N,)}
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("wfc", wfc), ("bfc", bfc)):
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"{name}: expected shape {expected[name]} for {K} heads and {C} channels, "
                             f"got {tuple(t.shape)}")
    return B, C, H, W, K, J, N


def head_fusion_triton(x, maps, w1, b1, w2, b2, wfc, bfc, log_softmax: bool, allow_tf32: bool = False,
                       out=None):
    """x: B×C×H×W (any strides), maps: B×K×H×W float32, SE weights w1 K×J×C, b1 K×J, w2 K×C×J,
    b2 K×C, classifier wfc N×C, bfc N (all float32). Returns (logits B×N, heads B×K×C) in x's
    dtype, written into `out` = (logits, heads) if given."""
    B, C, H, W, K, J, N = _check(x, maps, w1, b1, w2, b2, wfc, bfc)
    if C > BLOCK_C_MAX:
        raise ValueError(f"head_fusion: at most {BLOCK_C_MAX} channels in one pass, got {C}")
    maps, w1, b1, w2, b2, wfc, bfc = (t.contiguous() for t in (maps, w1, b1, w2, b2, wfc, bfc))
    if out is None:
        logits = torch.empty((B, N), device=x.device, dtype=x.dtype)
        heads = torch.empty((B, K, C), device=x.device, dtype=x.dtype)
    else:
        logits, heads = out
        for name, t, shape in (("logits", logits, (B, N)), ("heads", heads, (B, K, C))):
            if tuple(t.shape) != shape or t.dtype != x.dtype or not t.is_contiguous() or t.device != x.device:
                raise ValueError(f"out {name}: expected a contiguous {x.dtype} tensor of shape {shape}, "
                                 f"got {t.dtype} {tuple(t.shape)}")
    _head_fusion_kernel[(B,)](
        x, maps, w1, b1, w2, b2, wfc, bfc, logits, heads,
        C, H * W, W, J, N, 1.0 / (H * W), *x.stride(),
        NUM_HEADS=K, LOG_SOFTMAX=bool(log_softmax),
        BLOCK_K=max(16, triton.next_power_of_2(K)),  # tl.dot needs at least 16 rows
        BLOCK_C=triton.next_power_of_2(C), BLOCK_P=16,
        BLOCK_J=triton.next_power_of_2(J), BLOCK_N=max(8, triton.next_power_of_2(N)),
        PRECISION=dot_precision(torch.float32, allow_tf32), num_warps=8,
    )
    return logits, heads


def head_fusion_reference(x, maps, w1, b1, w2, b2, wfc, bfc, log_softmax: bool):
    """The same math in torch ops, computed in float32 (float64 for float64 inputs): the CPU
    backend and the tests' reference."""
    B, C, H, W, K, J, N = _check(x, maps, w1, b1, w2, b2, wfc, bfc, reference=True)
    xf = x.to(maps.dtype).reshape(B, C, H * W)
    v = torch.bmm(maps.reshape(B, K, H * W), xf.transpose(1, 2)) / (H * W)  # B×K×C
    hidden = torch.relu(torch.einsum("bkc,kjc->bkj", v, w1) + b1)
    gate = torch.sigmoid(torch.einsum("bkj,kcj->bkc", hidden, w2) + b2)
    heads = v * gate
    if log_softmax:
        heads = torch.log_softmax(heads, dim=1)
    logits = torch.addmm(bfc, heads.sum(1), wfc.t())
    return logits.to(x.dtype), heads.to(x.dtype)


_PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def aot_configurations():
    """The configurations the engine launches for DAN-style heads (512 channels, 32 hidden,
    5 to 8 classes, 1 to 8 heads), per activation dtype, for ahead-of-time compilation."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        a = _PTR[dtype]
        sig = {"x_ptr": a, **{n: "*fp32" for n in ("map_ptr", "w1_ptr", "b1_ptr", "w2_ptr", "b2_ptr",
                                                   "wfc_ptr", "bfc_ptr")},
               "logits_ptr": a, "heads_ptr": a,
               **{n: "i32" for n in ("C", "HW", "W", "J", "NCLS")}, "inv_hw": "fp32",
               **{n: "i32" for n in ("sxb", "sxc", "sxh", "sxw")},
               **{n: "constexpr" for n in ("NUM_HEADS", "LOG_SOFTMAX", "BLOCK_K", "BLOCK_C", "BLOCK_P",
                                           "BLOCK_J", "BLOCK_N", "PRECISION")}}
        for heads in (1, 2, 4, 8):
            constexprs = {"NUM_HEADS": heads, "LOG_SOFTMAX": heads > 1, "BLOCK_K": 16, "BLOCK_C": 512,
                          "BLOCK_P": 16, "BLOCK_J": 32, "BLOCK_N": 8, "PRECISION": "ieee"}
            yield "head_fusion", _head_fusion_kernel, sig, constexprs, {"num_warps": 8}
