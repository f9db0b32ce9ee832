"""An MBConv block in one C call (mobile.c): its expand GEMM, depthwise loops, squeeze-excite and
project GEMM, where each conv's form at the input's shape is ferfuse's C one (their first calls
at that shape, made one conv at a time, timed it faster than oneDNN). The same passes run as the
four calls would, bit for bit; the Python between them goes (engine/patterns/mbconv.py). A run of
such blocks, each on the one before's output, is one call too (MBConvChain): the Python between
blocks goes as well."""
import ctypes
import math
from pathlib import Path

import torch

from . import native
from .depthwise import ACTIVATIONS, MixedDepthwise, SqueezeExcite
from .pointwise import ACT_CODES, PointwiseConv
from .scratch import scratch

SOURCE = Path(__file__).with_name("mobile.c")


# the fields of a block's record, in mobile.c's order (its R_* enum)
RECORD = ("B", "H", "W", "cin", "we", "be", "cmid", "act_e",
          "taps", "bd", "k", "stride", "Ho", "Wo", "start", "ksize", "act_d",
          "hidden", "w1", "b1", "w2t", "b2", "act_s", "chunks",
          "wp", "bp", "cout", "residual", "group", "threads")


def _declare(lib):
    p = ctypes.c_void_p
    lib.mbconv.argtypes = [p, p, p, p, p, p]  # record, x, u, y, squeeze-excite scratch, out
    lib.mbconv_chain.argtypes = [p, ctypes.c_int, p, p, p, p, p, p, p]  # records, n, x, u, y, scratch, ping, pong, out


LIBRARY = native.Library(SOURCE, _declare)


class Layout:
    """One block at one input shape: its record for mobile.c and the shapes of its maps."""

    def __init__(self, record: list[int], u: tuple | None, y: tuple, gate: tuple, out: tuple):
        self.record, self.u, self.y, self.gate, self.out = record, u, y, gate, out
        self.packed = (ctypes.c_int64 * len(record))(*record)


class MBConvCall:
    """One block's C forms, packed: `run(x, residual)` is the whole block."""

    def __init__(self, expand: PointwiseConv | None, expand_act: str | None, dw: MixedDepthwise, dw_act: str | None,
                 se: SqueezeExcite, project: PointwiseConv):
        self.parts = (expand, dw, se, project)  # kept alive: the pointers below are theirs
        ptr = native.ptr
        self.cmid, self.cout, self.dw = dw.split[0], project.out_channels, dw
        self.weights = {"we": ptr(expand.packed) if expand else 0, "be": ptr(expand.bias) if expand else 0,
                        "act_e": ACT_CODES[expand_act] if expand else 0,
                        "taps": ptr(dw.taps), "bd": ptr(dw.bias_c), "k": dw.size, "stride": dw.stride,
                        "start": ptr(dw.starts), "ksize": ptr(dw.sizes),
                        "act_d": ACTIVATIONS[dw_act][0] if dw_act else 0,
                        "hidden": se.w1.shape[0], **dict(zip(("w1", "b1", "w2t", "b2"), map(ptr, se.packed))),
                        "act_s": ACTIVATIONS[se.act][0], "wp": ptr(project.packed), "bp": ptr(project.bias)}
        self.expands = expand is not None
        self._layouts: dict[tuple, Layout] = {}
        self.chained = False  # run inside an MBConvChain (engine/patterns/mbconv.py BlockChain)

    def layout(self, shape: tuple, residual: bool) -> Layout:
        """The record and map shapes at input `shape` (N×C×H×W), on this many threads."""
        threads = torch.get_num_threads()
        key = (tuple(shape), residual, threads)
        found = self._layouts.get(key)
        if found is None:
            n, c, h, w = shape
            ho, wo = self.dw.out_size(h, w)
            cmid = self.cmid
            group = samples_per_pass(n, cmid * (h * w + ho * wo) * 4 if self.expands else cmid * ho * wo * 4)
            chunks = -(-threads // group)  # squeeze-excite's pixel ranges per sample (depthwise.py SqueezeExcite)
            fields = {**self.weights, "B": n, "H": h, "W": w, "cin": c, "cmid": cmid, "Ho": ho, "Wo": wo,
                      "chunks": chunks, "cout": self.cout, "residual": int(residual), "group": group,
                      "threads": threads}
            found = self._layouts[key] = Layout(
                [int(fields[name]) for name in RECORD], (group, cmid, h, w) if self.expands else None,
                (group, cmid, ho, wo), (group * chunks, cmid, 1, 1), (n, self.cout, ho, wo))
        return found

    @torch.compiler.disable  # raw pointers: a compiler cannot see the writes
    def run(self, x: torch.Tensor, residual: bool) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        at = self.layout(x.shape, residual)
        u = scratch(0, at.u) if at.u else x
        y, gate = scratch(1, at.y), scratch(2, at.gate)
        out = torch.empty(at.out, memory_format=torch.channels_last)
        ptr = native.ptr
        LIBRARY.get().mbconv(at.packed, ptr(x), ptr(u), ptr(y), ptr(gate), ptr(out))
        return out


class MBConvChain:
    """A run of blocks, each on the one before's output, as one C call (mobile.c mbconv_chain):
    the same passes as their calls one by one, bit for bit, with no Python between blocks. Built
    for one input shape from the blocks' calls and whether each adds its residual."""

    def __init__(self, blocks: list[tuple[MBConvCall, bool]], shape: tuple):
        self.blocks = [call for call, _ in blocks]  # kept alive: the records point into their weights
        layouts = []
        for call, residual in blocks:
            layouts.append(call.layout(shape, residual))
            shape = layouts[-1].out
        self.out = shape
        self.count = len(layouts)
        self.records = (ctypes.c_int64 * (len(RECORD) * len(layouts)))(*[v for a in layouts for v in a.record])

        def largest(maps):  # one flat map holds the largest of them
            maps = [m for m in maps if m is not None]
            return (1, max(math.prod(m) for m in maps), 1, 1) if maps else None

        self.u, self.y = largest(a.u for a in layouts), largest(a.y for a in layouts)
        self.gate, self.between = largest(a.gate for a in layouts), largest(a.out for a in layouts[:-1])

    @torch.compiler.disable  # raw pointers: a compiler cannot see the writes
    def run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        ptr = native.ptr
        u = scratch(0, self.u) if self.u else None
        y, gate = scratch(1, self.y), scratch(2, self.gate)
        # the maps between blocks die in this call: scratch slots no block call uses
        ping, pong = (scratch(3, self.between), scratch(4, self.between)) if self.between else (None, None)
        out = torch.empty(self.out, memory_format=torch.channels_last)
        LIBRARY.get().mbconv_chain(self.records, self.count, ptr(x), ptr(u), ptr(y), ptr(gate), ptr(ping), ptr(pong),
                                   ptr(out))
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
