"""Winograd F(4×4, 3×3) for the stride-1 3×3 convolutions of CPU trunks.

A direct 3×3 convolution spends 9 multiply-adds per output and input channel; F(4×4, 3×3) spends
36 per 4×4 output tile, 2.25 (4× fewer). oneDNN already runs direct convolutions at this machine's
peak, so fewer multiply-adds is what is left to gain on the ResNet trunks of DAN and MACA-Net
(engine.md's algebra removes only 7% of DAN's). The pieces:

- the weight transform U = G g Gᵀ, computed once in float64 from the folded weight;
- the input transform V = Bᵀ d B and output transform Y = Aᵀ M A + bias (+ residual, ReLU): small
  C loops in winograd.c, built with the system C compiler on first use and cached;
- the 36 GEMMs M[p] = V[p] U[p]: one grouped 1×1 convolution on oneDNN (groups = 36), or
  ferfuse's own GEMM on V in place (pointwise.c's gemm_groups), whichever the first call at a GEMM
  shape timed faster (`gemm_engine`): on a 2-core AVX2 EPYC they ran level on most of DAN's shapes
  and ours 1.4× faster at 512 channels on 7×7 maps at batch 8, and oneDNN's call costs ~50 µs
  more; on AVX-512 oneDNN's wider kernels may win, so the CPU in hand decides. (MKL's sgemm reaches
  half the machine's peak on this AMD machine.)

`winograd_reference` is the same algorithm in plain float64 torch, for the tests. Errors: the
transforms multiply by up to 8 and the interpolation points ±2 amplify rounding, so fp32 results
differ from direct convolution by ~1e-6 relative rather than ~1e-7 (measured per layer in
tests/engine/test_winograd.py; optimize() verifies the whole model against float64).
"""
import ctypes
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import threading

import torch

from . import native, pointwise

SOURCE = Path(__file__).with_name("winograd.c")


@dataclass(frozen=True)
class Variant:
    """F(m×m, 3×3): output tiles m×m from input tiles (m+2)×(m+2); the C functions that transform."""
    tile: int
    bt: torch.Tensor  # (m+2)×(m+2)
    g: torch.Tensor  # (m+2)×3
    at: torch.Tensor  # m×(m+2)
    c_input: str
    c_output: str

    @property
    def alpha(self) -> int:
        return self.tile + 2


_t = partial(torch.tensor, dtype=torch.float64)
# Lavin & Gray (2016). F(4, 3): interpolation points 0, ±1, ±2 and ∞
F43 = Variant(4,
              _t([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
              _t([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
              _t([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
              "winograd_f43_input", "winograd_f43_output")
# F(2, 3): points 0, ±1 and ∞
F23 = Variant(2,
              _t([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
              _t([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]]),
              _t([[1, 1, 1, 0], [0, 1, -1, -1]]),
              "winograd_f23_input", "winograd_f23_output")
VARIANTS = {4: F43, 2: F23}

# what runs the 36 (or 16) GEMMs: oneDNN's grouped 1×1 convolution, or ferfuse's GEMM
GEMM_ENGINES = ("onednn", "gemm")
# the engine per GEMM problem (shape of V, channels, groups, threads), timed once per process:
# equal convolutions share it
ENGINE_BY_PROBLEM: dict[tuple, str] = {}
_ENGINE_LOCK = threading.Lock()


def eligible(weight: torch.Tensor, stride, padding, dilation) -> bool:
    """A 3×3 convolution (dense or grouped) with stride 1, padding 1 and no dilation."""
    return (weight.dim() == 4 and tuple(weight.shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(padding) == (1, 1) and tuple(dilation) == (1, 1))


def transform_weight(weight: torch.Tensor, variant: Variant = F43) -> torch.Tensor:
    """U[p] = G g Gᵀ for every (out, in) channel pair, in float64, as the weight of a grouped 1×1
    convolution: (α²·K) × C/groups × 1 × 1, the group of tile position p and conv group j holding
    rows p·K + j·K/groups onward (the order of the conv's own output channels within p)."""
    k, c = weight.shape[:2]
    u = torch.einsum("ui,kcij,vj->uvkc", variant.g, weight.double(), variant.g)
    return u.reshape(variant.alpha ** 2 * k, c, 1, 1)


def tiles(h: int, w: int, tile: int = 4) -> tuple[int, int]:
    return -(-h // tile), -(-w // tile)


def winograd_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, groups: int = 1,
                       variant: Variant = F43) -> torch.Tensor:
    """The same algorithm in plain float64 torch (NCHW): equal to conv2d(x, weight, bias,
    padding=1, groups=groups) up to rounding; tests use it to check each C transform on its own."""
    x, weight = x.double(), weight.double()
    n, c, h, w = x.shape
    m, a = variant.tile, variant.alpha
    th, tw = tiles(h, w, m)
    xp = torch.nn.functional.pad(x, (1, m * tw + 1 - w, 1, m * th + 1 - h))
    d = xp.unfold(2, a, m).unfold(3, a, m)  # n, c, th, tw, α, α
    v = torch.einsum("ui,nctwij,vj->nuvtwc", variant.bt, d, variant.bt)
    k = weight.shape[0]
    u = transform_weight(weight, variant).view(a, a, groups, k // groups, c // groups)
    mm = torch.einsum("nuvtwgc,uvgkc->nuvtwgk", v.unflatten(-1, (groups, c // groups)), u).flatten(-2)
    y = torch.einsum("iu,nuvtwk,jv->nktiwj", variant.at, mm, variant.at).reshape(n, k, m * th, m * tw)[:, :, :h, :w]
    return y if bias is None else y + bias.double().view(1, -1, 1, 1)


# -- the C transforms: built once per machine and source (engine/native.py) ----------------------
def _declare(lib):
    i, p = ctypes.c_int, ctypes.c_void_p
    for variant in VARIANTS.values():
        getattr(lib, variant.c_input).argtypes = [p, p, i, i, i, i, i, i, i]
        getattr(lib, variant.c_output).argtypes = [p, p, p, p, i, i, i, i, i, i, i, i]


LIBRARY = native.Library(SOURCE, _declare)
library = LIBRARY.get  # the built transforms; raises NativeUnavailable (with the reason) where they cannot be built
unavailable_reason = LIBRARY.unavailable_reason


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


class WinogradConv:
    """A folded 3×3 stride-1 convolution run as F(m×m, 3×3): C input transform, the GEMMs (oneDNN's
    grouped 1×1 on weights packed per GEMM input shape, batch included, or ferfuse's GEMM), C output
    transform with bias, residual and ReLU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1, tile: int = 4):
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError(f"Winograd runs float32 CPU convolutions, got {weight.dtype} on {weight.device}")
        self.variant = VARIANTS[tile]
        self.groups = groups
        self.out_channels, self.in_channels = weight.shape[0], weight.shape[1] * groups
        self.u = transform_weight(weight, self.variant).float().contiguous()
        self.bias = (bias if bias is not None else torch.zeros(self.out_channels)).float().contiguous()
        self._packed: dict[tuple, torch.Tensor] = {}
        self._panels: torch.Tensor | None = None  # U in pointwise.c's layout, packed on first use
        self.engines: dict[tuple, str] = {}  # GEMM shape -> engine its timing chose, for the report
        self.lib = library()

    def packed(self, shape: list[int]) -> torch.Tensor:
        """U packed for the GEMMs' input of exactly this shape (batch included: executors.ConvRunner.packed)."""
        from .executors import pack_for_shape

        a2 = self.variant.alpha ** 2
        return pack_for_shape(self._packed, tuple(shape), lambda: torch._C._nn.mkldnn_reorder_conv2d_weight(
            self.u.to_mkldnn(), [0, 0], [1, 1], [1, 1], a2 * self.groups, list(shape)))

    def panels(self) -> torch.Tensor:
        if self._panels is None:  # a racing thread packs an equal one: harmless
            self._panels = pointwise.pack(self.u, self.variant.alpha ** 2 * self.groups)
        return self._panels

    def gemm_shape(self, x_shape) -> list[int]:
        """The shape of the transformed input V that the GEMMs read, for an input of `x_shape`."""
        n, _, h, w = x_shape
        return [n, self.variant.alpha ** 2 * self.in_channels, *tiles(h, w, self.variant.tile)]

    def drop_packed(self, x_shape):
        """Forget the GEMM weight packed for inputs of `x_shape` (a tile that lost the timing there)."""
        self._packed.pop(tuple(self.gemm_shape(x_shape)), None)
        self.engines.pop(tuple(self.gemm_shape(x_shape)), None)
        if "gemm" not in self.engines.values():
            self._panels = None

    def gemm(self, v: torch.Tensor, engine: str) -> torch.Tensor:
        """M = the GEMMs of V and U (channels-last, α²·K channels), on `engine`."""
        a2, g = self.variant.alpha ** 2, self.groups
        if engine == "onednn":
            m = torch.ops.mkldnn._convolution_pointwise(v, self.packed(v.shape), None, [0, 0], [1, 1], [1, 1],
                                                        a2 * g, "none", [], "")
            return _channels_last(m)
        n, _, th, tw = v.shape
        c, k = self.in_channels, self.out_channels
        m = torch.empty((n, a2 * k, th, tw), memory_format=torch.channels_last)
        pointwise.gemm_groups(v, a2 * c, self.panels(), None, m, a2 * k, n * th * tw, c // g, k // g, a2 * g)
        return m

    def gemm_engine(self, v: torch.Tensor) -> str:
        """The engine for GEMMs on V's shape: timed on the first call of the problem, kept after."""
        from .executors import fastest, once, shape_key

        def choose():
            if pointwise.unavailable_reason() is not None:
                return "onednn"
            best = fastest(GEMM_ENGINES, lambda engine: self.gemm(v, engine))[0]
            if best != "onednn":
                self._packed.pop(tuple(v.shape), None)
            return best

        key = (self.in_channels, self.out_channels, self.groups, *shape_key(v.shape))
        engine = once(ENGINE_BY_PROBLEM, key, _ENGINE_LOCK, choose)
        self.engines[tuple(v.shape)] = engine
        if engine != "gemm" and "gemm" not in self.engines.values():
            self._panels = None
        return engine

    # the C transforms write through raw pointers, which a compiler cannot see: torch.compile runs
    # this call eagerly (a graph break) rather than tracing buffers it might reuse
    @torch.compiler.disable
    def run(self, x: torch.Tensor, relu: bool = False, residual: torch.Tensor | None = None,
            engine: str | None = None) -> torch.Tensor:
        """act(conv(x) + residual); the GEMMs on `engine` (one of GEMM_ENGINES), or None: the timed one."""
        n, c, h, w = x.shape
        if c != self.in_channels or x.dtype != torch.float32 or x.device.type != "cpu":
            raise ValueError(f"expected a float32 CPU input with {self.in_channels} channels, got {x.dtype} "
                             f"{tuple(x.shape)} on {x.device}")
        variant, a2 = self.variant, self.variant.alpha ** 2
        th, tw = tiles(h, w, variant.tile)
        threads = torch.get_num_threads()
        x = _channels_last(x)
        v = torch.empty((n, a2 * c, th, tw), memory_format=torch.channels_last)
        getattr(self.lib, variant.c_input)(native.ptr(x), native.ptr(v), n, h, w, c, th, tw, threads)
        m = self.gemm(v, engine or self.gemm_engine(v))
        y = torch.empty((n, self.out_channels, h, w), memory_format=torch.channels_last)
        res = _channels_last(residual) if residual is not None else None
        if res is not None and (res.shape != y.shape or res.dtype != torch.float32):
            raise ValueError(f"residual {res.dtype} {tuple(res.shape)} for a float32 output of shape {tuple(y.shape)}")
        getattr(self.lib, variant.c_output)(native.ptr(m), native.ptr(self.bias), native.ptr(res), native.ptr(y),
                                            n, h, w, self.out_channels, th, tw, int(relu), threads)
        return y
