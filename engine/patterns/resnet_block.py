"""ResNet basic blocks (torchvision's BasicBlock: conv1, bn1, relu, conv2, bn2, downsample):
    out = ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x))
with every BN folded; on the oneDNN executor the first ReLU and the residual add + ReLU run in
the convolutions' epilogues."""
import torch.nn as nn

from ..fused import FusedUnit
from . import Skip, is_claimed
from .conv_bn import foldable_reason, folded_conv


class FusedBasicBlock(FusedUnit):
    pattern = "resnet_block"

    def __init__(self, name: str, block: nn.Module, **kw):
        super().__init__({name: block}, **kw)
        self.block = block

    def fold(self, device):
        blk = self.block
        out = {"conv1": folded_conv(blk.conv1, blk.bn1, device, self.dtype),
               "conv2": folded_conv(blk.conv2, blk.bn2, device, self.dtype)}
        if blk.downsample is not None:
            out["downsample"] = folded_conv(*blk.downsample, device, self.dtype)
        return out

    def forward(self, x):
        f, ex = self.folded(x.device), self.conv_executor()
        x = x.to(self.dtype)
        shortcut = f["downsample"].run(x, executor=ex) if "downsample" in f else x
        return f["conv2"].run(f["conv1"].run(x, act="relu", executor=ex), act="relu", residual=shortcut, executor=ex)

    def reference(self, modules, x):
        return modules[0](x)

    def install(self, model):
        self.install_forward(self.block, f"{self.block._get_name()}[fused: BN folded]")


def block_reason(block: nn.Module) -> str | None:
    for n in ("conv1", "bn1", "conv2", "bn2"):
        if not isinstance(getattr(block, n, None), nn.Module):
            return f"no {n}"
    if hasattr(block, "conv3"):
        return "a bottleneck block (conv3)"
    if type(getattr(block, "relu", None)) is not nn.ReLU:
        return "no ReLU"
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
        reason = foldable_reason(getattr(block, conv), getattr(block, bn))
        if reason:
            return f"{conv}/{bn}: {reason}"
    ds = getattr(block, "downsample", "missing")
    if ds == "missing":
        return "no downsample attribute"
    if ds is not None:
        if not (isinstance(ds, nn.Sequential) and len(ds) == 2) or foldable_reason(ds[0], ds[1]):
            return "downsample is not Sequential(Conv2d, BatchNorm2d)"
    return None


class ResNetBlockPattern:
    name = "resnet_block"

    def find(self, model: nn.Module, claimed: set[str], **kw):
        found = []
        for name, module in model.named_modules():
            if not all(hasattr(module, n) for n in ("conv1", "bn1", "conv2", "bn2")):
                continue  # not block-shaped (CoordAtt has conv1/bn1/conv2 too): not a candidate
            if is_claimed(name, claimed) or not name:
                continue
            reason = block_reason(module)
            if reason:
                found.append(Skip(self.name, name, reason))
            else:
                found.append(FusedBasicBlock(name, module, **kw))
        return found
