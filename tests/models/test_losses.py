"""DAN's training losses against hand-computed values, and that they decrease when trained."""
import math

import torch
import torch.nn.functional as F

from ferfuse.models import AffinityLoss, DANLoss, PartitionLoss


def test_affinity_loss_hand_computed():
    loss = AffinityLoss(num_classes=2, feat_dim=2)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
    feats = torch.tensor([[1.0, 0.0], [2.0, 1.0]]).view(2, 2, 1, 1)  # GAP of a 1×1 map is the value
    labels = torch.tensor([0, 1])
    # squared distances to own centre: 1 and 1; centres' variance per dim: 2 and 2 -> sum 4
    # plus the upstream clamp(min=1e-12) of the two masked-out zeros
    expected = (1 / 4 + 1 / 4 + 2e-12) / 2
    assert math.isclose(loss(feats, labels).item(), expected, rel_tol=1e-6)


def test_partition_loss_hand_computed():
    heads = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])  # B=1, K=2, C=2; var over heads = 2 per channel
    assert math.isclose(PartitionLoss()(heads).item(), math.log(1 + 2 / 2), rel_tol=1e-6)
    assert PartitionLoss()(heads[:, :1]).item() == 0.0


def test_dan_losses_decrease_on_a_tiny_problem(gen):
    # a stand-in network with DAN's outputs: features (B×4×2×2), heads (B×3×4), logits (B×3)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(4, 4, 1)
    heads_proj = torch.nn.Linear(4, 12)
    cls = torch.nn.Linear(4, 3)
    criterion = DANLoss(num_classes=3, feat_dim=4)
    x = torch.randn(16, 4, 2, 2, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    params = [*net.parameters(), *heads_proj.parameters(), *cls.parameters(), *criterion.parameters()]
    opt = torch.optim.SGD(params, lr=0.05)

    def step():
        feats = net(x)
        pooled = feats.mean((2, 3))
        heads = F.log_softmax(heads_proj(pooled).view(16, 3, 4), dim=1)
        loss = criterion((cls(heads.sum(1)), feats, heads), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    losses = [step() for _ in range(30)]
    assert losses[-1] < losses[0]
