"""MHAN, Multi-head Hybrid Attention Network (Pattern Recognition 2026), as the official code builds
it: MixedFeatureNet trunk (112×112 → 512×7×7), Efficient Local Attention, K coordinate-attention
heads with squeeze-excite, max fusion over heads, product with x, a depthwise 7×7 "Linear" + BN,
and `fc`. Forward returns `(logits, x_after_ela, list_of_head_maps)`."""
import torch
import torch.nn as nn

from .base import FERModel
from .mixed_feature_net import HSwish, Linear_block, mixed_feature_net_features
from .registry import register


class ELA(nn.Module):
    """Efficient Local Attention: directional means through one shared depthwise Conv1d, one
    shared GroupNorm and a sigmoid; out = x · a_h · a_w."""

    def __init__(self, channels: int = 512, kernel_size: int = 5, groups: int = 32):
        super().__init__()
        self.con1 = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)
        self.GN = nn.GroupNorm(groups, channels)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        b, c, h, w = x.shape
        a_h = self.sigmoid(self.GN(self.con1(x.mean(dim=3)))).view(b, c, h, 1)
        a_w = self.sigmoid(self.GN(self.con1(x.mean(dim=2)))).view(b, c, 1, w)
        return x * a_h * a_w


class SEDDA(nn.Module):
    """Coordinate attention with squeeze-excite. Depthwise (1,7) and (7,1) Linear_blocks collapse
    W and H; concat; 1×1 conv → BN → h_swish; split; 1×1 convs + sigmoid give a_h, a_w; the map
    z = a_h·a_w (x is not multiplied here); s = σ(W2·ReLU(W1·GAP(z))); returns z·s. Upstream also
    builds a depthwise 7×7 `Linear` block here that forward never uses (kept for the keys)."""

    def __init__(self, channels: int = 512, size: int = 7, reduction: int = 32, se_hidden: int = 32):
        super().__init__()
        mip = channels // reduction
        self.Linear_h = Linear_block(channels, channels, groups=channels, kernel=(1, size))
        self.Linear_w = Linear_block(channels, channels, groups=channels, kernel=(size, 1))
        self.conv1 = nn.Conv2d(channels, mip, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.relu = HSwish()
        self.conv2 = nn.Conv2d(mip, channels, kernel_size=1)
        self.conv3 = nn.Conv2d(mip, channels, kernel_size=1)
        self.Linear = Linear_block(channels, channels, groups=channels, kernel=(size, size))
        self.fc = nn.Sequential(nn.Linear(channels, se_hidden, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(se_hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x):
        b, c, h, w = x.shape
        x_h = self.Linear_h(x)                     # b×c×h×1
        x_w = self.Linear_w(x).permute(0, 1, 3, 2)  # b×c×w×1
        y = self.relu(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv2(x_h).sigmoid()
        a_w = self.conv3(x_w.permute(0, 1, 3, 2)).sigmoid()
        z = a_h * a_w
        s = self.fc(z.mean(dim=(2, 3)))
        return z * s.view(b, c, 1, 1)


class MHANHead(nn.Module):
    def __init__(self, channels: int = 512):
        super().__init__()
        self.SEDDAHead = SEDDA(channels)

    def forward(self, x):
        return self.SEDDAHead(x)


class MHAN(FERModel):
    input_size = (3, 112, 112)

    def __init__(self, num_classes: int = 7, num_heads: int = 2):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be at least 1, got {num_heads}")
        self.features = mixed_feature_net_features()
        self.num_head = num_heads
        for i in range(num_heads):
            setattr(self, f"cat_head{i}", MHANHead())
        self.ela = ELA(512)
        self.Linear = Linear_block(512, 512, groups=512, kernel=(7, 7))
        self.fc = nn.Linear(512, num_classes)
        self.bn = nn.BatchNorm1d(num_classes)  # built upstream, never used by forward

    def forward(self, x):
        x = self.ela(self.features(x))
        heads = [getattr(self, f"cat_head{i}")(x) for i in range(self.num_head)]
        fused = heads[0]
        for head in heads[1:]:
            fused = torch.max(fused, head)
        y = self.Linear(x * fused).flatten(1)
        return self.fc(y), x, heads


@register("mhan")
def mhan(num_classes: int = 7, num_heads: int = 2) -> MHAN:
    return MHAN(num_classes=num_classes, num_heads=num_heads)
