"""A convolution no other structure claimed (HAFEM's 1×1 projection into tokens), on the tuned
runner instead of F.conv2d: oneDNN with its weight prepacked per input shape, or for a 1×1 conv
ferfuse's GEMM, whichever its first call at a shape timed faster (engine/executors.py). On the 2-core
AVX2 EPYC, HAFEM's 2048→512 projection took 1.35 ms as F.conv2d at batch 1, where ONNX Runtime's
conv took 0.61. Tried last, after every pattern that folds or fuses a conv."""
import torch.nn as nn

from ..executors import ConvRunner
from ..fused import FusedUnit
from . import Skip, is_claimed


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
        found = []
        for name, m in model.named_modules():
            if not name or type(m) is not nn.Conv2d or is_claimed(name, claimed):
                continue
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                found.append(Skip(self.name, name, f"padding {m.padding!r} with mode {m.padding_mode!r}: only "
                                                   "numeric zero padding runs on the runner"))
            else:
                found.append(LoneConv(name, m, **kw))
        return found
