"""How a folded convolution runs: `aten` (F.conv2d: cuDNN on GPU, any device, traceable),
`onednn` (CPU: weights prepacked once into oneDNN's blocked layout, activations channels_last,
bias + ReLU and the residual add fused into the convolution, as inductor's CPU freezing does), or
`winograd` (CPU: `onednn`, except that dense stride-1 3×3 convolutions run as Winograd, engine/winograd.py:
F(4×4, 3×3) on maps of at least 14×14, 4× fewer multiply-adds; F(2×2, 3×3) on 7×7 to 13×13, 2.25×)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import winograd

EXECUTORS = ("aten", "onednn", "winograd")
# the CPU executors: oneDNN prepacked convs with fused epilogues (Winograd on top of oneDNN)
ONEDNN_EXECUTORS = ("onednn", "winograd")


def winograd_tile(h: int, w: int) -> int | None:
    """The Winograd output tile for an h×w map, None for direct convolution. Measured here (2 cores,
    AVX-512) against prepacked oneDNN: F(4×4) runs 2.0-2.5× faster on 14×14 to 56×56 maps at batch 1
    and 8, but at 7×7 (4 tiles, 31% of them padding) reading its 36 transformed 512×512 matrices
    costs more than it saves (0.76-0.83×); F(2×2) is 1.08-1.10× there. Below 7×7 nothing was measured."""
    size = min(h, w)
    return 4 if size >= 14 else 2 if size >= 7 else None


def onednn_available() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._convolution_pointwise  # noqa: B018 - probe the op's presence
    except (AttributeError, RuntimeError):
        return False
    return True


# activations a folded conv can apply in its epilogue: torch function and oneDNN's post-op name
ACTIVATIONS = {"relu": (torch.relu, "relu"), "sigmoid": (torch.sigmoid, "sigmoid"), "silu": (F.silu, "swish")}


class ConvRunner:
    """A folded conv; `run(x, act=None, residual=None)` computes act(conv(x) + residual), `act`
    one of ACTIVATIONS."""

    def __init__(self, weight, bias, executor: str, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups, self.bias, self.executor = groups, bias, executor
        if executor not in EXECUTORS:
            raise ValueError(f"unknown conv executor {executor!r}; known: {EXECUTORS}")
        self.weight = weight
        self._packed: dict[tuple, torch.Tensor] = {}
        self.winograd_eligible = executor == "winograd" and groups == 1 and winograd.eligible(
            weight, stride, padding, dilation)  # grouped (DAN's heads): direct measured faster
        self._winograd: dict[int, winograd.WinogradConv] = {}  # per tile size, built on first use

    def packed(self, shape: torch.Size) -> torch.Tensor:
        """The weight in oneDNN's blocked layout for inputs of this channels×height×width: the
        layout depends on the spatial size (a 1×1 packed for 64×64 runs 13× slower on 7×7), not
        on the batch, so one packing serves every batch size."""
        key = tuple(shape[1:])
        packed = self._packed.get(key)
        if packed is None:
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                self.weight.contiguous().to_mkldnn(), self.padding, self.stride, self.dilation, self.groups,
                [1, *key])
            self._packed[key] = packed  # a racing thread packs the same tensor: harmless
        return packed

    @classmethod
    def like(cls, conv: nn.Conv2d, weight, bias, executor: str) -> "ConvRunner":
        """A runner with `conv`'s hyper-parameters (zero padding given as numbers)."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"{conv}: only numeric zero padding is folded")
        return cls(weight, bias, executor, conv.stride, conv.padding, conv.dilation, conv.groups)

    def winograd(self, x) -> winograd.WinogradConv | None:
        """The Winograd form that runs input `x`, or None for direct convolution."""
        tile = winograd_tile(*x.shape[2:]) if self.winograd_eligible else None
        if tile is None:
            return None
        conv = self._winograd.get(tile)
        if conv is None:  # a racing thread builds an equal one: harmless
            conv = self._winograd[tile] = winograd.WinogradConv(self.weight, self.bias, tile=tile)
        return conv

    def run(self, x, act: str | None = None, residual=None):
        wino = self.winograd(x) if act in (None, "relu") else None
        if wino is not None:
            return wino.run(x, relu=act == "relu", residual=residual)
        if self.executor != "aten":
            x = x.contiguous(memory_format=torch.channels_last)
            op = torch.ops.mkldnn._convolution_pointwise
            unary = ACTIVATIONS[act][1] if act else "none"
            weight = self.packed(x.shape)
            if residual is None:
                return op(x, weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
                          unary, [], "")
            return op.binary(x, residual.contiguous(memory_format=torch.channels_last), weight, self.bias,
                             self.padding, self.stride, self.dilation, self.groups, "add", 1.0, unary, [], "")
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if residual is not None:
            y = y + residual
        return ACTIVATIONS[act][0](y) if act else y
