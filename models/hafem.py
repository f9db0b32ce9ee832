"""HAFEM, Hybrid Attention-driven Facial Expression Mapping (2026): abstract only.

EfficientNet-B5 trunk + CBAM + one light multi-head self-attention transformer block. Every layer
choice is a [choice] of ../shared/spec/models.md, kept in `HAFEMConfig`:
backbone torchvision efficientnet_b5().features (2048×7×7 at 224); CBAM(2048, reduction 16);
1×1 projection 2048→512 into 49 tokens; one pre-norm encoder layer (d=512, 8 heads, FFN 2048);
mean over tokens → LayerNorm → Linear(512, C). Forward returns `(logits, embedding)`, the
embedding being the LayerNorm'd 512-vector the centre loss reads ([choice]).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
from torchvision.models import efficientnet_b5

from .base import FERModel
from .registry import register


@dataclass(frozen=True)
class HAFEMConfig:
    channels: int = 2048      # [choice] EfficientNet-B5 features' output width
    reduction: int = 16       # [choice] CBAM channel-MLP reduction
    spatial_kernel: int = 7   # [choice] CBAM spatial conv
    dim: int = 512            # [choice] token width
    heads: int = 8            # [choice] attention heads
    ffn: int = 2048           # [choice] feed-forward width
    dropout: float = 0.1      # [choice] transformer dropout (inactive in eval)


class CBAM(nn.Module):
    """Channel attention (avg and max pool through one shared MLP, summed, sigmoid), then spatial
    attention (channel mean and max stacked, k×k conv, sigmoid)."""

    def __init__(self, channels=2048, reduction=16, spatial_kernel=7):
        super().__init__()
        hidden = channels // reduction
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def forward(self, x):
        ca = torch.sigmoid(self.mlp(x.mean(dim=(2, 3), keepdim=True)) + self.mlp(x.amax(dim=(2, 3), keepdim=True)))
        x = x * ca
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(stats))


class HAFEM(FERModel):
    input_size = (3, 224, 224)

    def __init__(self, num_classes: int = 7, config: HAFEMConfig = HAFEMConfig()):
        super().__init__()
        self.config = config
        self.backbone = efficientnet_b5(weights=None).features
        self.cbam = CBAM(config.channels, config.reduction, config.spatial_kernel)
        self.proj = nn.Conv2d(config.channels, config.dim, kernel_size=1)
        self.transformer = nn.TransformerEncoderLayer(config.dim, config.heads, config.ffn, dropout=config.dropout,
                                                      batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(config.dim)
        self.fc = nn.Linear(config.dim, num_classes)

    @classmethod
    def config_from_state_dict(cls, state):
        return {"num_classes": state["fc.weight"].shape[0]} if "fc.weight" in state else {}

    def forward(self, x):
        x = self.cbam(self.backbone(x))
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # B×49×512
        embedding = self.norm(self.transformer(tokens).mean(dim=1))
        return self.fc(embedding), embedding


@register("hafem")
def hafem(num_classes: int = 7, config: HAFEMConfig = HAFEMConfig()) -> HAFEM:
    return HAFEM(num_classes=num_classes, config=config)
