"""1×1 convolutions as ferfuse's own GEMM (pointwise.c): the expand and project convolutions of
the mobile blocks (HAFEM's MBConv, MHAN's Mix_Depth_Wise), with bias, the residual add and ReLU or
SiLU fused. On the `winograd` executor each eligible 1×1 conv times this against oneDNN's on its
first call at an input shape and keeps the faster (engine/executors.py), so no speed claim measured
on one CPU decides for another: without AVX2 and FMA the C file compiles to a plain loop that the
timing never keeps.

Errors: each K-block of 256 input channels is summed from zero in registers and added to the
running sum, as a blocked GEMM does; measured against float64 in tests/engine/test_pointwise.py
beside oneDNN's."""
import ctypes
from pathlib import Path

import torch

from . import native
from .depthwise import ACTIVATIONS
from .scratch import output_map

SOURCE = Path(__file__).with_name("pointwise.c")
NR = 16  # output channels per packed panel (pointwise.c)
# the epilogues a 1×1 conv offers (both oneDNN's and the GEMM's), by activation.h's ACT_* code
ACT_CODES = {None: 0, **{name: ACTIVATIONS[name][0] for name in ("relu", "silu")}}


def _declare(lib):
    p, i = ctypes.c_void_p, ctypes.c_int
    i64 = ctypes.c_int64
    lib.gemm_groups.argtypes = [p, i64, p, p, p, p, i64, i64, i, i, i, i, i]


LIBRARY = native.Library(SOURCE, _declare)


def eligible(weight: torch.Tensor, stride, padding, dilation, groups: int) -> bool:
    """A dense stride-1 unpadded 1×1 float32 CPU convolution."""
    return (groups == 1 and tuple(weight.shape[2:]) == (1, 1) and tuple(stride) == (1, 1)
            and tuple(padding) == (0, 0) and tuple(dilation) == (1, 1)
            and weight.dtype == torch.float32 and weight.device.type == "cpu")


def unavailable_reason() -> str | None:
    return LIBRARY.unavailable_reason()


def pack(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """A (groups·N) × K weight (trailing 1×1 dims allowed) in pointwise.c's layout: per group,
    NR-channel panels × K × NR, zero-padded past N."""
    n, k = weight.shape[0] // groups, weight.shape[1]
    panels = -(-n // NR)
    w = weight.new_zeros(groups, panels * NR, k)
    w[:, :n] = weight.detach().reshape(groups, n, k)
    return w.view(groups, panels, NR, k).transpose(2, 3).contiguous()  # groups × panels × K × NR


def gemm_groups(x: torch.Tensor, ldx: int, packed: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                ldy: int, rows: int, k: int, n: int, groups: int, act: str | None = None,
                residual: torch.Tensor | None = None):
    """y_g = act(x_g w_gᵀ + bias_g (+ residual_g)) for each group g, in place in `y` (pointwise.c's
    gemm_groups: x_g is rows × k at column g·k of a row-major x with rows ldx apart; y_g likewise
    at column g·n, rows ldy apart). The caller owns the shapes: the C code trusts them."""
    LIBRARY.get().gemm_groups(native.ptr(x), ldx, native.ptr(packed), native.ptr(bias), native.ptr(residual),
                              native.ptr(y), ldy, rows, k, n, groups, ACT_CODES[act], torch.get_num_threads())


class PointwiseConv:
    """A folded 1×1 conv, weight packed once into NR-channel panels (pointwise.c's layout)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        n, k = weight.shape[:2]
        self.packed = pack(weight)
        self.bias = weight.new_zeros(self.packed.shape[1] * NR)
        if bias is not None:
            self.bias[:n] = bias.detach()
        self.out_channels, self.in_channels = n, k

    @torch.compiler.disable  # raw pointers: a compiler cannot see the writes
    def run(self, x: torch.Tensor, act: str | None = None, residual: torch.Tensor | None = None,
            scratch_slot: int | None = None) -> torch.Tensor:
        """act(conv(x) + residual) as a channels-last map; act None, 'relu' or 'silu'; written into
        this thread's scratch map `scratch_slot` (scratch.py) where given."""
        b, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        x = x.contiguous(memory_format=torch.channels_last)
        if residual is not None:
            residual = residual.contiguous(memory_format=torch.channels_last)
        n = self.out_channels
        y = output_map((b, n, h, w), scratch_slot)
        gemm_groups(x, c, self.packed, self.bias, y, n, b * h * w, c, n, 1, act, residual)
        return y
