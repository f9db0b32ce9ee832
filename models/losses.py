"""Training losses of the four networks, computed as their upstream code does."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class AffinityLoss(nn.Module):
    """DAN's affinity loss (official code): learnable class centres; per sample the squared
    distance of GAP(features) to its class centre, divided by the centres' summed variance,
    summed and divided by the batch size."""

    def __init__(self, num_classes: int = 7, feat_dim: int = 512):
        super().__init__()
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if features.dim() == 4:
            features = F.adaptive_avg_pool2d(features, 1).flatten(1)
        batch = features.size(0)
        distmat = (
            features.pow(2).sum(dim=1, keepdim=True).expand(batch, self.num_classes)
            + self.centers.pow(2).sum(dim=1, keepdim=True).expand(self.num_classes, batch).t()
        )
        distmat = distmat.addmm(features, self.centers.t(), beta=1, alpha=-2)
        classes = torch.arange(self.num_classes, device=labels.device)
        mask = labels.unsqueeze(1).expand(batch, self.num_classes).eq(classes.expand(batch, self.num_classes))
        dist = distmat * mask.float() / self.centers.var(dim=0).sum()
        return dist.clamp(min=1e-12, max=1e12).sum() / batch


class PartitionLoss(nn.Module):
    """DAN's partition loss on the log-softmaxed heads: log(1 + K / (var_over_heads.mean() + eps));
    zero for a single head."""

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        self.eps = eps

    def forward(self, heads: torch.Tensor) -> torch.Tensor:
        num_head = heads.size(1)
        if num_head <= 1:
            return heads.new_zeros(())
        var = heads.var(dim=1).mean()
        return torch.log(1 + num_head / (var + self.eps))


class DANLoss(nn.Module):
    """Cross-entropy + affinity + partition, weights 1, 1, as DAN's training script."""

    def __init__(self, num_classes: int = 7, feat_dim: int = 512):
        super().__init__()
        self.affinity = AffinityLoss(num_classes, feat_dim)
        self.partition = PartitionLoss()

    def forward(self, outputs, labels):
        logits, features, heads = outputs
        return F.cross_entropy(logits, labels) + self.affinity(features, labels) + self.partition(heads)
