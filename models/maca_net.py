"""MACA-Net, Multi-head Attention and Clustering-guided Network: a paper without official code.

Every choice the paper leaves open is a field of `MACAConfig` with the spec's default
(../shared/spec/models.md, marked [choice] there):
- `gate`: the spatial self-attention gate Z_self is Conv2d(512, 1, 1) then Sigmoid, a spatial map
  broadcast over channels;
- `fuse_bias`: the in-head fusion Conv1x1([X_sa, X_ca]) 1024→512 has a bias and no BN;
- `logits_bn`: DAN's BatchNorm1d on the logits is kept, with DAN's `(logits, x, heads)` return.
Trunk: torchvision ResNet-34's first 8 children (512×7×7 at 224). Heads reuse DAN's spatial unit.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import resnet34

from .base import FERModel
from .dan import _conv_bn, init_head_weights
from .registry import register


@dataclass(frozen=True)
class MACAConfig:
    gate: str = "conv1x1_sigmoid"  # [choice] Z_self
    fuse_bias: bool = True         # [choice] bias on the 1024→512 fusion conv, no BN
    logits_bn: bool = True         # [choice] DAN's BatchNorm1d on the logits


class MACASpatialAttention(nn.Module):
    """DAN's spatial unit up to the ReLU, then the self-attention gate: X ⊙ Z_self(Y)."""

    def __init__(self, channels=512, reduced=256, config=MACAConfig()):
        super().__init__()
        if config.gate != "conv1x1_sigmoid":
            raise ValueError(f"unknown MACA-Net gate {config.gate!r}")
        self.conv1x1 = _conv_bn(channels, reduced, 1)
        self.conv_3x3 = _conv_bn(reduced, channels, 3, padding=1)
        self.conv_1x3 = _conv_bn(reduced, channels, (1, 3), padding=(0, 1))
        self.conv_3x1 = _conv_bn(reduced, channels, (3, 1), padding=(1, 0))
        self.relu = nn.ReLU()
        self.gate = nn.Sequential(nn.Conv2d(channels, 1, kernel_size=1), nn.Sigmoid())

    def forward(self, x):
        y = self.conv1x1(x)
        y = self.relu(self.conv_3x3(y) + self.conv_1x3(y) + self.conv_3x1(y))
        return x * self.gate(y)


class MACAChannelAttention(nn.Module):
    """Y = GAP(X) + GMP(X) through Linear, BN1d, ReLU, Linear, Sigmoid; X ⊙ y."""

    def __init__(self, channels=512, hidden=32):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x):
        pooled = x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))
        return x * self.attention(pooled)[:, :, None, None]


class MACAHead(nn.Module):
    """Cross-attention head: spatial and channel branches on x, Conv1x1 over their concatenation,
    GAP → 512."""

    def __init__(self, channels=512, config=MACAConfig()):
        super().__init__()
        self.sa = MACASpatialAttention(channels, config=config)
        self.ca = MACAChannelAttention(channels)
        self.fuse = nn.Conv2d(2 * channels, channels, kernel_size=1, bias=config.fuse_bias)
        init_head_weights(self)  # DAN's head initialisation

    def forward(self, x):
        out = self.fuse(torch.cat([self.sa(x), self.ca(x)], dim=1))
        return out.mean(dim=(2, 3))


class MACANet(FERModel):
    input_size = (3, 224, 224)

    def __init__(self, num_classes: int = 7, num_heads: int = 4, config: MACAConfig = MACAConfig()):
        super().__init__()
        self.config = config
        resnet = resnet34(weights=None)
        self.features = nn.Sequential(*list(resnet.children())[:-2])
        self.num_head = num_heads
        for i in range(num_heads):
            setattr(self, f"cat_head{i}", MACAHead(512, config))
        self.fc = nn.Linear(512, num_classes)
        self.bn = nn.BatchNorm1d(num_classes) if config.logits_bn else None

    @classmethod
    def config_from_state_dict(cls, state):
        return {**FERModel.heads_and_classes(state), "config": MACAConfig(
            fuse_bias="cat_head0.fuse.bias" in state, logits_bn="bn.weight" in state)}

    def forward(self, x):
        x = self.features(x)
        heads = torch.stack([getattr(self, f"cat_head{i}")(x) for i in range(self.num_head)], dim=1)
        if heads.size(1) > 1:
            heads = F.log_softmax(heads, dim=1)
        out = self.fc(heads.sum(dim=1))
        if self.bn is not None:
            out = self.bn(out)
        return out, x, heads


@register("maca_net")
def maca_net(num_classes: int = 7, num_heads: int = 4, config: MACAConfig = MACAConfig()) -> MACANet:
    return MACANet(num_classes=num_classes, num_heads=num_heads, config=config)
