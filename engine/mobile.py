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
                           p, p, i, i, i, i]  # project: wp, bp, cout, residual; samples per pass, threads


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
        group = samples_per_pass(n, self.cmid * (h * w + ho * wo) * 4 if self.expand[0] else self.cmid * ho * wo * 4)
        chunks = -(-threads // group)  # squeeze-excite's pixel ranges per sample (depthwise.py SqueezeExcite)
        u = scratch(0, (group, self.cmid, h, w)) if self.expand[0] else x
        y = scratch(1, (group, self.cmid, ho, wo))
        gate_scratch = scratch(2, (group * chunks, self.cmid, 1, 1))
        out = torch.empty((n, self.cout, ho, wo), memory_format=torch.channels_last)
        LIBRARY.get().mbconv(native.ptr(x), native.ptr(u), native.ptr(y), native.ptr(out), n, h, w, c, *self.expand,
                             *self.depthwise, ho, wo, *self.groups, *self.gate, native.ptr(gate_scratch), chunks,
                             *self.project, int(residual), group, threads)
        return out


def last_level_cache_bytes() -> int | None:
    """The size of the CPU's last-level cache as Linux reports it (sysfs), None where it does not."""
    found = None
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, size = int((index / "level").read_text()), (index / "size").read_text().strip()
            kind = (index / "type").read_text().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        value = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        if kind in ("Unified", "Data") and (found is None or level > found[0]):
            found = (level, value)
    return found[1] if found else None


LLC_BYTES = last_level_cache_bytes()


def samples_per_pass(batch: int, map_bytes: int) -> int:
    """How many samples go through a block's four passes at a time: as many as keep their
    intermediate maps (`map_bytes` a sample) within half the last-level cache, so that the depthwise
    conv, the gate and the project GEMM read them from the cache, not from DRAM. HAFEM at batch 8
    on the 2-core AVX-512 EPYC (32 MB L3): 347 -> 318 ms a forward, against 299 for ONNX Runtime in
    the same process; groups for a quarter, an eighth or a 32nd of the cache, or one sample at a
    time, measured 318-329 ms, timed alternately in one process (within its noise)."""
    if LLC_BYTES is None:
        return batch
    return max(1, min(batch, LLC_BYTES // 2 // map_bytes))
