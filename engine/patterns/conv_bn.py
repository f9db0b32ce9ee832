"""Convolutions followed by a BatchNorm: fold the BN into the conv (§1 of engine.md).

Matched by structure: in any module, a Conv2d registered directly before a BatchNorm2d over its
output channels (torchvision's ResNet stem, `Sequential(conv, bn)`, Conv_block ...). Inside an
nn.Sequential, whose order is its forward, a ReLU, SiLU or sigmoid right after the BN is fused too
(EfficientNet's Conv2dNormActivation is such a Sequential). The conv then
runs with the folded weights (and the activation), and the BN (and activation) pass their input
through, in eval mode.
"""
import torch.nn as nn

from ..algebra import fold_batchnorm
from ..executors import ConvRunner
from ..fused import FusedUnit, original_forward, unit_of
from . import Skip, is_claimed


def folded_conv(conv: nn.Conv2d, bn, device, dtype) -> ConvRunner:
    """`conv` with `bn` folded into it (in float64), as a runner of `dtype` on `device`."""
    w, b = fold_batchnorm(conv.weight, conv.bias, bn)
    return ConvRunner.like(conv, w.to(device, dtype), b.to(device, dtype))


class FoldedConvBN(FusedUnit):
    pattern = "conv_bn"
    entries_exact = False  # the conv returns conv+BN(+activation): a hook on it would see that

    def __init__(self, modules: dict[str, nn.Module], **kw):
        super().__init__(modules, **kw)
        self.conv, self.bn, *rest = modules.values()
        self.act_module = rest[0] if rest else None
        self.act = FUSABLE_ACTIVATIONS[type(self.act_module)] if rest else None

    def fold(self, device):
        return {"conv": folded_conv(self.conv, self.bn, device, self.dtype)}

    def forward(self, x):
        return self.folded(x.device)["conv"].run(x.to(self.dtype), act=self.act, executor=self.conv_executor())

    def reference(self, modules, x):
        for m in modules:
            x = m(x)
        return x

    def install(self, model):
        act = f"+{self.act_module._get_name()}" if self.act_module is not None else ""
        self.install_forward(self.conv, f"{self.conv._get_name()}+BN{act}[folded]")
        self.rebind(self.bn, _pass_through, f"{self.bn._get_name()}[folded into conv]")
        if self.act_module is not None:
            self.rebind(self.act_module, _pass_through, f"{self.act_module._get_name()}[fused into conv]")

    def active(self, module=None):
        return super().active(self.conv) and not self.bn.training


FUSABLE_ACTIVATIONS = {nn.ReLU: "relu", nn.SiLU: "silu", nn.Sigmoid: "sigmoid"}


def _pass_through(self, x):
    return x if unit_of(self).active() else original_forward(self, x)


def foldable_reason(conv, bn) -> str | None:
    if not isinstance(conv, nn.Conv2d) or type(bn) is not nn.BatchNorm2d:
        return "not a Conv2d followed by a BatchNorm2d"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"padding {conv.padding!r} with mode {conv.padding_mode!r}: only numeric zero padding is folded"
    if bn.num_features != conv.out_channels:
        return f"BatchNorm2d has {bn.num_features} features, the conv {conv.out_channels} outputs"
    if not bn.track_running_stats or bn.running_mean is None:
        return "BatchNorm2d keeps no running statistics (it normalises by batch statistics)"
    return None


class ConvBNPattern:
    name = "conv_bn"

    def find(self, model: nn.Module, claimed: set[str], **kw):
        found = []
        for parent_name, parent in model.named_modules():
            if is_claimed(parent_name, claimed) and parent_name:
                continue
            prefix = f"{parent_name}." if parent_name else ""
            children = list(parent.named_children())
            for i, ((cname, conv), (bname, bn)) in enumerate(zip(children, children[1:])):
                if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
                    continue
                modules = {prefix + cname: conv, prefix + bname: bn}
                if any(is_claimed(n, claimed) for n in modules):
                    continue
                reason = foldable_reason(conv, bn)
                if reason:
                    found.append(Skip(self.name, " + ".join(modules), reason))
                    continue
                if isinstance(parent, nn.Sequential) and i + 2 < len(children) \
                        and type(children[i + 2][1]) in FUSABLE_ACTIVATIONS:
                    modules[prefix + children[i + 2][0]] = children[i + 2][1]
                found.append(FoldedConvBN(modules, **kw))
        return found
