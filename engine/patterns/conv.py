"""A convolution no other structure claimed (HAFEM's 1×1 projection into tokens), on the tuned
runner instead of F.conv2d: oneDNN with its weight prepacked per input shape, or for a 1×1 conv
ferfuse's GEMM, whichever its first call at a shape timed faster (engine/executors.py). On the 2-core
AVX2 EPYC, HAFEM's 2048→512 projection took 1.35 ms as F.conv2d at batch 1, where ONNX Runtime's
conv took 0.61. Tried last, after every pattern that folds or fuses a conv."""
import torch.nn as nn

from ..executors import ConvRunner
from ..fused import FusedUnit
from . import find_modules


class LoneConv(FusedUnit):
    pattern = "conv"

    def __init__(self, name: str, conv: nn.Conv2d, **kw):
        super().__init__({name: conv}, **kw)
        self.conv = conv

    def fold(self, device):
        conv, dt = self.conv, self.dtype
        bias = None if conv.bias is None else conv.bias.detach().to(device, dt)
        return {"conv": ConvRunner.like(conv, conv.weight.detach().to(device, dt), bias)}

    def forward(self, x):
        return self.folded(x.device)["conv"].run(x.to(self.dtype), executor=self.conv_executor())

    def reference(self, modules, x):
        return modules[0](x)

    def install(self, model):
        self.install_forward(self.conv, f"{self.conv._get_name()}[runner]")


class LoneConvPattern:
    name = "conv"

    def find(self, model: nn.Module, claimed: set[str], **kw):
        return find_modules(self.name, model, claimed, lambda m: type(m) is nn.Conv2d, _padding_reason, LoneConv,
                            **kw)


def _padding_reason(conv: nn.Conv2d) -> str | None:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"padding {conv.padding!r} with mode {conv.padding_mode!r}: only numeric zero padding runs on the runner"
    return None
