"""DAN, "Distract Your Attention" (Wen et al., Biomimetics 2023), as the official code builds it.

State_dict keys, forward order and return value follow the upstream code exactly
(../shared/spec/models.md): a ResNet-18 trunk, K cross-attention heads of spatial attention
(1x1 reduce, then 3x3 + 1x3 + 3x1 convs with BN, ReLU, channel sum) and channel attention
(squeeze-excite), log_softmax over heads, sum, `fc`, and a BatchNorm1d on the logits.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import resnet18

from .base import FERModel
from .registry import register


def _conv_bn(cin, cout, kernel_size, padding=0):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, padding=padding), nn.BatchNorm2d(cout))


class SpatialAttention(nn.Module):
    def __init__(self, channels: int = 512, reduced: int = 256):
        super().__init__()
        self.conv1x1 = _conv_bn(channels, reduced, 1)
        self.conv_3x3 = _conv_bn(reduced, channels, 3, padding=1)
        self.conv_1x3 = _conv_bn(reduced, channels, (1, 3), padding=(0, 1))
        self.conv_3x1 = _conv_bn(reduced, channels, (3, 1), padding=(1, 0))
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.conv1x1(x)
        y = self.relu(self.conv_3x3(y) + self.conv_1x3(y) + self.conv_3x1(y))
        y = y.sum(dim=1, keepdim=True)  # the map is not normalised: no sigmoid, no softmax
        return x * y


class ChannelAttention(nn.Module):
    def __init__(self, channels: int = 512, hidden: int = 32):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.attention = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, sa):
        sa = self.gap(sa)
        sa = sa.view(sa.size(0), -1)
        y = self.attention(sa)
        return sa * y


def init_head_weights(head: nn.Module):
    """DAN's head initialisation: convs kaiming_normal (fan_out) with zero bias, BatchNorm2d
    weight 1 and bias 0, Linear normal(std=0.001) with zero bias."""
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)


class CrossAttentionHead(nn.Module):
    def __init__(self, channels: int = 512):
        super().__init__()
        self.sa = SpatialAttention(channels)
        self.ca = ChannelAttention(channels)
        self.init_weights()

    def init_weights(self):
        init_head_weights(self)

    def forward(self, x):
        return self.ca(self.sa(x))


class DAN(FERModel):
    """DAN with `num_heads` cross-attention heads. Forward returns `(logits, features, heads)`:
    the trunk's B×512×h×w map and the B×K×512 heads after log_softmax (K > 1)."""

    input_size = (3, 224, 224)

    def __init__(self, num_classes: int = 7, num_heads: int = 4):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be at least 1, got {num_heads}")
        resnet = resnet18(weights=None)  # no download: users load their own checkpoints
        self.features = nn.Sequential(*list(resnet.children())[:-2])
        self.num_head = num_heads  # upstream's attribute name
        for i in range(num_heads):
            setattr(self, f"cat_head{i}", CrossAttentionHead())
        self.sig = nn.Sigmoid()  # built but unused upstream; kept for fidelity (no parameters)
        self.fc = nn.Linear(512, num_classes)
        self.bn = nn.BatchNorm1d(num_classes)

    def forward(self, x):
        x = self.features(x)
        heads = [getattr(self, f"cat_head{i}")(x) for i in range(self.num_head)]
        heads = torch.stack(heads).permute([1, 0, 2])
        if heads.size(1) > 1:
            heads = F.log_softmax(heads, dim=1)
        out = self.fc(heads.sum(dim=1))
        out = self.bn(out)
        return out, x, heads


@register("dan")
def dan(num_classes: int = 7, num_heads: int = 4) -> DAN:
    return DAN(num_classes=num_classes, num_heads=num_heads)
