"""The middle of a mobile block on CPU, as C passes over channels-last maps (depthwise.c): MHAN's
mixed depthwise convolution (with the PReLU before it) and coordinate attention, EfficientNet's
squeeze-and-excitation; the 1×1 expand and project convolutions around them run on oneDNN or
ferfuse's GEMM (engine/patterns/mix_depthwise.py for MHAN, mbconv.py for EfficientNet), and
EfficientNet's depthwise conv here or on oneDNN, as its first call at a shape timed (executors.py).

HAFEM's CBAM (CBAMGate) is a pass here too, though it follows the trunk rather than a block.

MHAN's trunk is 34 such blocks on maps of 28×28 to 7×7: as torch ops each block is ~25 calls
(split, a conv per kernel size, cat, two means, cat, three 1×1 convs, h-swish, two sigmoids, two
products, ...), each too small to amortise its dispatch; here it is two calls. EfficientNet-B5's
39 MBConv blocks have fewer ops and larger maps; their squeeze-excite is one call instead of six.

The C pass reads every channel's kernel from one K×K×C table (K the largest size), each group's
k×k kernel centred in it, and visits only the group's own k×k taps. `run_torch` (the aten executor,
CUDA, ONNX export, FLOP counting) runs one conv per group, as upstream does: a single K×K conv
would be exact too (a k×k kernel with padding k/2 equals the K×K one with a zero ring and padding
K/2) but multiplies the zeros, 0.57 G multiply-adds for MHAN instead of 0.54 G."""
import ctypes
from pathlib import Path

import torch
import torch.nn.functional as F

from . import native
from .scratch import output_map

SOURCE = Path(__file__).with_name("depthwise.c")


def _declare(lib):
    i, p = ctypes.c_int, ctypes.c_void_p
    lib.mixed_depthwise.argtypes = [p, p, p, p, p, i, i, i, i, i, i, i, i, i, p, p, i, i]
    lib.coordinate_attention.argtypes = [p, i, i, i, i, i, p, p, p, p, p, p, p, i]
    lib.squeeze_excite.argtypes = [p, i, i, i, i, p, p, p, p, i, p, i, i]
    lib.cbam.argtypes = [p, p, i, i, i, i, i, p, p, p, p, p, p, i, p, i]


LIBRARY = native.Library(SOURCE, _declare)


def hard_swish(x: torch.Tensor) -> torch.Tensor:
    """x·relu6(x + 3)/6 (MHAN's h_swish, which differs from F.hardswish's rounding by the division)."""
    return x * (F.relu6(x + 3) / 6)


# the activations of the C passes (activation.h's ACT_* codes, shared with pointwise.c) and their torch form
ACTIVATIONS = {"silu": (1, F.silu), "hard_swish": (2, hard_swish), "relu": (3, torch.relu)}


def eligible(weight: torch.Tensor, stride, padding, dilation, groups: int) -> bool:
    """A float32 CPU depthwise conv (one input and one output channel per group) with an odd square
    kernel, padding k/2, stride 1 or 2 alike in both directions, no dilation: what the C pass runs."""
    k = weight.shape[-1]
    return (weight.dim() == 4 and weight.shape[0] == groups and weight.shape[1] == 1 and weight.shape[2] == k
            and k % 2 == 1 and tuple(padding) == (k // 2, k // 2) and tuple(stride) in ((1, 1), (2, 2))
            and tuple(dilation) == (1, 1) and weight.dtype == torch.float32 and weight.device.type == "cpu")


class MixedDepthwise:
    """Depthwise convolution whose channel groups have their own odd square kernels (MixConv, Tan &
    Le 2019), stride `stride`, padding k/2, optional bias; `prelu` slopes (one per channel) are
    applied to the input first."""

    def __init__(self, kernels: list[torch.Tensor], bias: torch.Tensor | None, stride: int,
                 prelu: torch.Tensor | None = None):
        sizes = [k.shape[-1] for k in kernels]
        self.size, self.stride = max(sizes), stride
        self.kernels, self.bias, self.prelu = kernels, bias, prelu
        self.split = [k.shape[0] for k in kernels]  # each group's channel count
        taps = kernels[0].new_zeros(self.size, self.size, sum(self.split))  # K × K × C: channels innermost
        c0, starts = 0, [0]
        for k, n in zip(kernels, self.split):
            off, size = (self.size - k.shape[-1]) // 2, k.shape[-1]
            taps[off:off + size, off:off + size, c0:c0 + n] = k[:, 0].permute(1, 2, 0)
            c0 += n
            starts.append(c0)
        self.taps = taps.float().contiguous()
        # the C pass's float32 contiguous copies, made once (a PReLU's single slope arrives expanded)
        self.bias_c = None if bias is None else bias.float().contiguous()
        self.prelu_c = None if prelu is None else prelu.float().contiguous()
        self.starts = torch.tensor(starts, dtype=torch.int32)
        self.sizes = torch.tensor(sizes, dtype=torch.int32)

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        p = self.size // 2
        return (h + 2 * p - self.size) // self.stride + 1, (w + 2 * p - self.size) // self.stride + 1

    def run_torch(self, x: torch.Tensor) -> torch.Tensor:
        if self.prelu is not None:
            x = F.prelu(x, self.prelu.to(x.dtype))
        biases = [None] * len(self.split) if self.bias is None else self.bias.to(x.dtype).split(self.split)
        parts = [F.conv2d(part, k.to(x.dtype), b, self.stride, k.shape[-1] // 2, 1, k.shape[0])
                 for part, k, b in zip(x.split(self.split, dim=1), self.kernels, biases)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    @torch.compiler.disable  # the C pass writes through raw pointers, which a compiler cannot see
    def run_c(self, x: torch.Tensor, act: str | None = None, scratch_slot: int | None = None) -> torch.Tensor:
        """The C pass on a float32 CPU map, `act` (an ACTIVATIONS name) applied to its output,
        written into this thread's scratch map `scratch_slot` (scratch.py) where given; x must be
        the caller's own: the PReLU is applied to it in place (to its channels-last copy where it is
        not channels-last)."""
        n, c, h, w = x.shape
        x = x.contiguous(memory_format=torch.channels_last)
        ho, wo = self.out_size(h, w)
        y = output_map((n, c, ho, wo), scratch_slot)
        LIBRARY.get().mixed_depthwise(native.ptr(x), native.ptr(self.taps), native.ptr(self.bias_c),
                                      native.ptr(self.prelu_c), native.ptr(y), n, h, w, c, ho, wo, self.stride,
                                      self.size, len(self.sizes), native.ptr(self.starts), native.ptr(self.sizes),
                                      ACTIVATIONS[act][0] if act else 0, torch.get_num_threads())
        return y


class CoordinateAttention:
    """Coordinate attention (Hou et al., CVPR 2021) with its BatchNorm folded:
    m_h = mean_W y, m_w = mean_H y; z = h_swish(w1·m + b1) (shared); a_h = σ(w2·z_h + b2),
    a_w = σ(w3·z_w + b3); out = y·a_w·a_h."""

    def __init__(self, w1, b1, w2, b2, w3, b3):
        self.w1, self.b1, self.w2, self.b2, self.w3, self.b3 = w1, b1, w2, b2, w3, b3
        f = [t.float().contiguous() for t in (w1, b1, w2.t(), b2, w3.t(), b3)]
        self.packed = f  # w1: mip×C, w2ᵀ and w3ᵀ: mip×C, so the C loops run over channels

    def run_torch(self, y: torch.Tensor) -> torch.Tensor:
        h = y.shape[2]
        m = torch.cat([y.mean(3), y.mean(2)], dim=2)  # n × C × (H + W)
        w1, b1, w2, b2, w3, b3 = (t.to(y.dtype) for t in (self.w1, self.b1, self.w2, self.b2, self.w3, self.b3))
        z = hard_swish(torch.einsum("jc,ncp->njp", w1, m) + b1.view(1, -1, 1))
        a_h = torch.sigmoid(torch.einsum("cj,njp->ncp", w2, z[:, :, :h]) + b2.view(1, -1, 1)).unsqueeze(3)
        a_w = torch.sigmoid(torch.einsum("cj,njp->ncp", w3, z[:, :, h:]) + b3.view(1, -1, 1)).unsqueeze(2)
        return y * a_w * a_h

    @torch.compiler.disable
    def run_c(self, y: torch.Tensor) -> torch.Tensor:
        """In place on a channels-last float32 CPU map (the caller's own); returns it."""
        if not y.is_contiguous(memory_format=torch.channels_last):
            raise ValueError("coordinate attention's C pass runs in place on a channels-last map")
        n, c, h, w = y.shape
        scratch = torch.empty(n * (h + w) * c)
        w1, b1, w2t, b2, w3t, b3 = (native.ptr(t) for t in self.packed)
        LIBRARY.get().coordinate_attention(native.ptr(y), n, h, w, c, self.w1.shape[0], w1, b1, w2t, b2, w3t, b3,
                                           native.ptr(scratch), torch.get_num_threads())
        return y


class SqueezeExcite:
    """Squeeze-and-excitation as EfficientNet's MBConv has it: s = σ(w2·act(w1·GAP(y) + b1) + b2)
    per sample, out = s·y; w1: hidden×C, w2: C×hidden."""

    def __init__(self, w1, b1, w2, b2, act: str):
        self.w1, self.b1, self.w2, self.b2, self.act = w1, b1, w2, b2, act
        self.packed = [t.float().contiguous() for t in (w1, b1, w2.t(), b2)]  # w2ᵀ: hidden×C

    def run_torch(self, y: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (t.to(y.dtype) for t in (self.w1, self.b1, self.w2, self.b2))
        z = ACTIVATIONS[self.act][1](F.linear(y.mean((2, 3)), w1, b1))
        return torch.sigmoid(F.linear(z, w2, b2))[:, :, None, None] * y

    @torch.compiler.disable
    def run_c(self, y: torch.Tensor) -> torch.Tensor:
        """In place on a channels-last float32 CPU map (the caller's own); returns it."""
        if not y.is_contiguous(memory_format=torch.channels_last):
            raise ValueError("squeeze-excite's C pass runs in place on a channels-last map")
        n, c, h, w = y.shape
        threads = torch.get_num_threads()
        chunks = -(-threads // n)  # pixel ranges per sample: every thread sums one at batch 1 too
        scratch = torch.empty(n * chunks * c)
        w1, b1, w2t, b2 = (native.ptr(t) for t in self.packed)
        LIBRARY.get().squeeze_excite(native.ptr(y), n, h * w, c, self.w1.shape[0], w1, b1, w2t, b2,
                                     ACTIVATIONS[self.act][0], native.ptr(scratch), chunks, threads)
        return y


class CBAMGate:
    """CBAM's channel then spatial attention (Woo et al., ECCV 2018) with the channel MLP
    w1 (hidden×C), b1, w2 (C×hidden), b2 and the spatial k×k conv sw (1×2×k×k), sb (1, or None):
    out = (y·ca)·sa, ca = σ(mlp(avg y) + mlp(max y)), sa = σ(conv([mean_c, max_c](y·ca)) + sb)."""

    def __init__(self, w1, b1, w2, b2, sw, sb):
        self.hidden, self.k = w1.shape[0], sw.shape[-1]
        self.packed = [t.float().contiguous() for t in (w1, b1, w2.t(), b2, sw.reshape(-1))]  # w2ᵀ: hidden×C
        self.sb = None if sb is None else sb.float().contiguous()

    @torch.compiler.disable
    def run_c(self, y: torch.Tensor) -> torch.Tensor:
        """A fresh channels-last map from a float32 CPU map (y is left as it is)."""
        n, c, h, w = y.shape
        y = y.contiguous(memory_format=torch.channels_last)
        out = torch.empty_like(y, memory_format=torch.channels_last)
        scratch = torch.empty(n * (2 * c + 2 * h * w))
        w1, b1, w2t, b2, sw = (native.ptr(t) for t in self.packed)
        LIBRARY.get().cbam(native.ptr(y), native.ptr(out), n, h, w, c, self.hidden, w1, b1, w2t, b2, sw,
                           native.ptr(self.sb), self.k, native.ptr(scratch), torch.get_num_threads())
        return out
