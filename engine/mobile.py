"""An MBConv block in one C call (mobile.c): its expand GEMM, depthwise loops, squeeze-excite and
project GEMM, where each conv's form at the input's shape is ferfuse's C one (their first calls
at that shape, made one conv at a time, timed it faster than oneDNN). The same passes run as the
four calls would, bit for bit; the Python between them goes (engine/patterns/mbconv.py)."""
import ctypes
from pathlib import Path

import torch

from . import native
from .depthwise import ACTIVATIONS, MixedDepthwise, SqueezeExcite
from .pointwise import ACT_CODES, PointwiseConv
from .scratch import scratch

SOURCE = Path(__file__).with_name("mobile.c")


def _declare(lib):
    i, p = ctypes.c_int, ctypes.c_void_p
    lib.mbconv.argtypes = [p, p, p, p, i, i, i, i,  # x, u, y, out, B, H, W, cin
                           p, p, i, i,  # expand: we, be, cmid, act
                           p, p, i, i, i, i, p, p, i,  # depthwise: taps, bias, k, stride, Ho, Wo, start, ksize, act
                           i, p, p, p, p, i, p, i,  # squeeze-excite: hidden, w1, b1, w2t, b2, act, scratch, chunks
                           p, p, i, i, i]  # project: wp, bp, cout, residual; threads


LIBRARY = native.Library(SOURCE, _declare)


class MBConvCall:
    """One block's C forms, packed: `run(x, residual)` is the whole block."""

    def __init__(self, expand: PointwiseConv | None, expand_act: str | None, dw: MixedDepthwise, dw_act: str | None,
                 se: SqueezeExcite, project: PointwiseConv):
        self.parts = (expand, dw, se, project)  # kept alive: the pointers below are theirs
        ptr = native.ptr
        self.cmid, self.cout, self.dw = dw.split[0], project.out_channels, dw
        self.expand = (ptr(expand.packed), ptr(expand.bias), self.cmid, ACT_CODES[expand_act]) if expand else \
            (None, None, self.cmid, 0)
        self.depthwise = (ptr(dw.taps), ptr(dw.bias_c), dw.size, dw.stride)
        self.groups = (ptr(dw.starts), ptr(dw.sizes), ACTIVATIONS[dw_act][0] if dw_act else 0)
        self.gate = (se.w1.shape[0], *(ptr(t) for t in se.packed), ACTIVATIONS[se.act][0])
        self.project = (ptr(project.packed), ptr(project.bias), self.cout)

    @torch.compiler.disable  # raw pointers: a compiler cannot see the writes
    def run(self, x: torch.Tensor, residual: bool) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.contiguous(memory_format=torch.channels_last)
        ho, wo = self.dw.out_size(h, w)
        threads = torch.get_num_threads()
        chunks = -(-threads // n)  # squeeze-excite's pixel ranges per sample (depthwise.py SqueezeExcite)
        u = scratch(0, (n, self.cmid, h, w)) if self.expand[0] else x
        y = scratch(1, (n, self.cmid, ho, wo))
        gate_scratch = scratch(2, (n * chunks, self.cmid, 1, 1))
        out = torch.empty((n, self.cout, ho, wo), memory_format=torch.channels_last)
        LIBRARY.get().mbconv(native.ptr(x), native.ptr(u), native.ptr(y), native.ptr(out), n, h, w, c, *self.expand,
                             *self.depthwise, ho, wo, *self.groups, *self.gate, native.ptr(gate_scratch), chunks,
                             *self.project, int(residual), threads)
        return out
