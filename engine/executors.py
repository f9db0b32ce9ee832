"""How a folded convolution runs: `aten` (F.conv2d: cuDNN on GPU, any device, traceable),
`onednn` (CPU: weights prepacked once into oneDNN's blocked layout, activations channels_last,
bias + ReLU and the residual add fused into the convolution, as inductor's CPU freezing does), or
`winograd` (CPU: `onednn`, except that stride-1 3×3 convolutions on maps of at least 14×14 run as
Winograd F(4×4, 3×3), engine/winograd.py: 4× fewer multiply-adds)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import winograd

EXECUTORS = ("aten", "onednn", "winograd")
# Winograd pays where a map has many 4×4 tiles: at 7×7 (4 tiles, 31% of them padding) the 36
# transformed 512×512 matrices are read for little work and direct oneDNN is faster (measured:
# 0.76× at batch 1, 0.83× at batch 8; 2.0-2.5× at 14×14 to 56×56).
WINOGRAD_MIN_SIZE = 14


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
        self.winograd = None
        if executor == "winograd" and winograd.eligible(weight, stride, padding, dilation, groups):
            self.winograd = winograd.WinogradConv(weight, bias)

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

    def run(self, x, act: str | None = None, residual=None):
        if self.winograd is not None and act in (None, "relu") and min(x.shape[2:]) >= WINOGRAD_MIN_SIZE:
            return self.winograd.run(x, relu=act == "relu", residual=residual)
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
