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


def _gap(features: torch.Tensor) -> torch.Tensor:
    return features.mean(dim=(2, 3)) if features.dim() == 4 else features


class AFCLoss(nn.Module):
    """MACA-Net's AFC loss: α·L_euc + (1−α)·L_cos with α = sigmoid(θ), θ learnable (init 0);
    L_euc = ½‖x − c_y‖² (mean over the batch), L_cos = 1 − cos(x, c_y); learnable class centres.
    Features are GAP of the trunk map, as DAN's affinity loss reads them ([choice])."""

    def __init__(self, num_classes: int = 7, feat_dim: int = 512):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))
        self.theta = nn.Parameter(torch.zeros(()))

    def forward(self, features, labels):
        x = _gap(features)
        c = self.centers[labels]
        euc = 0.5 * (x - c).pow(2).sum(dim=1).mean()
        cos = (1 - F.cosine_similarity(x, c, dim=1)).mean()
        alpha = torch.sigmoid(self.theta)
        return alpha * euc + (1 - alpha) * cos


class MILoss(PartitionLoss):
    """MACA-Net's MI loss: DAN's partition form with ε = 1e-5."""

    def __init__(self):
        super().__init__(eps=1e-5)


class MACALoss(nn.Module):
    """L_AFC + L_MI + CE."""

    def __init__(self, num_classes: int = 7, feat_dim: int = 512):
        super().__init__()
        self.afc = AFCLoss(num_classes, feat_dim)
        self.mi = MILoss()

    def forward(self, outputs, labels):
        logits, features, heads = outputs
        return F.cross_entropy(logits, labels) + self.afc(features, labels) + self.mi(heads)


class AttentionDiversityLoss(nn.Module):
    """MHAN's head-diversity term: the mean pairwise cosine similarity of the heads' attention
    maps (flattened per sample), so that heads attending alike are penalised; 0 for one head.
    The spec names the term without its formula: this form is ferfuse's [choice]."""

    def forward(self, heads):
        if isinstance(heads, (list, tuple)):
            heads = torch.stack(heads, dim=1)
        k = heads.size(1)
        if k <= 1:
            return heads.new_zeros(())
        flat = F.normalize(heads.flatten(2), dim=2)          # B×K×D
        sim = flat @ flat.transpose(1, 2)                    # B×K×K
        off = sim.sum(dim=(1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(dim=1)
        return (off / (k * (k - 1))).mean()


class MHANLoss(nn.Module):
    """Label-smoothed cross-entropy (α = 0.1) + 0.1 × attention diversity."""

    def __init__(self, smoothing: float = 0.1, diversity_weight: float = 0.1):
        super().__init__()
        self.smoothing = smoothing
        self.diversity_weight = diversity_weight
        self.diversity = AttentionDiversityLoss()

    def forward(self, outputs, labels):
        logits, _, heads = outputs
        ce = F.cross_entropy(logits, labels, label_smoothing=self.smoothing)
        return ce + self.diversity_weight * self.diversity(heads)


class CenterLoss(nn.Module):
    """½‖f − c_y‖², mean over the batch, with learnable class centres."""

    def __init__(self, num_classes: int = 7, feat_dim: int = 512):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features, labels):
        return 0.5 * (_gap(features) - self.centers[labels]).pow(2).sum(dim=1).mean()


class HAFEMLoss(nn.Module):
    """Cross-entropy with label smoothing, weighted by class frequency, + λ·centre loss.
    [choice]: class weights are inverse frequencies normalised to mean 1 (uniform when no
    frequencies are given), smoothing 0.1, λ = 0.01."""

    def __init__(self, num_classes: int = 7, feat_dim: int = 512, class_counts=None,
                 smoothing: float = 0.1, center_weight: float = 0.01):
        super().__init__()
        counts = torch.ones(num_classes) if class_counts is None else torch.as_tensor(class_counts, dtype=torch.float)
        if counts.numel() != num_classes or (counts <= 0).any():
            raise ValueError(f"class_counts: expected {num_classes} positive counts, got {counts.tolist()}")
        weight = 1.0 / counts
        self.register_buffer("class_weight", weight * num_classes / weight.sum())
        self.smoothing = smoothing
        self.center_weight = center_weight
        self.center = CenterLoss(num_classes, feat_dim)

    def forward(self, outputs, labels):
        logits, embedding = outputs
        ce = F.cross_entropy(logits, labels, weight=self.class_weight, label_smoothing=self.smoothing)
        return ce + self.center_weight * self.center(embedding, labels)
