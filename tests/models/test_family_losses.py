"""MACA-Net, MHAN and HAFEM losses: hand-computed values on tiny inputs, and that they decrease."""
import math

import pytest
import torch
import torch.nn.functional as F

from ferfuse.models import (AFCLoss, AttentionDiversityLoss, CenterLoss, HAFEMLoss, MACALoss, MHANLoss, MILoss)


def test_afc_loss_hand_computed():
    loss = AFCLoss(num_classes=2, feat_dim=2)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    x = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    y = torch.tensor([0, 1])
    euc = (0.5 * 1.0 + 0.0) / 2                      # ½‖(0,1)‖², ½‖0‖², mean
    cos = ((1 - 1 / math.sqrt(2)) + 0.0) / 2         # 1 − cos 45°, 1 − cos 0
    assert math.isclose(loss(x, y).item(), 0.5 * euc + 0.5 * cos, rel_tol=1e-6)  # α = σ(0) = ½


def test_mi_loss_hand_computed():
    heads = torch.tensor([[[0.0, 0.0], [2.0, 2.0]]])  # var over 2 heads = 2
    assert math.isclose(MILoss()(heads).item(), math.log(1 + 2 / (2 + 1e-5)), rel_tol=1e-6)


def test_attention_diversity_hand_computed():
    a = torch.tensor([1.0, 0.0]).view(1, 2, 1)
    b = torch.tensor([1.0, 1.0]).view(1, 2, 1)
    heads = [a.view(1, 1, 2, 1), b.view(1, 1, 2, 1)]
    assert math.isclose(AttentionDiversityLoss()(heads).item(), 1 / math.sqrt(2), rel_tol=1e-6)
    assert AttentionDiversityLoss()(heads[:1]).item() == 0.0


def test_center_and_hafem_loss_hand_computed():
    center = CenterLoss(num_classes=2, feat_dim=2)
    with torch.no_grad():
        center.centers.zero_()
    f = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    assert math.isclose(center(f, y).item(), (0.5 * 25 + 0) / 2, rel_tol=1e-6)
    loss = HAFEMLoss(num_classes=2, feat_dim=2, class_counts=[3, 1], smoothing=0.0, center_weight=0.01)
    with torch.no_grad():
        loss.center.centers.zero_()
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([0.5, 1.5])  # inverse frequency, mean 1
    ce = (w[0] * -F.log_softmax(logits[0], 0)[0] + w[1] * -F.log_softmax(logits[1], 0)[1]) / w.sum()
    assert math.isclose(loss((logits, f), y).item(), ce.item() + 0.01 * 6.25, rel_tol=1e-5)
    with pytest.raises(ValueError, match="class_counts"):
        HAFEMLoss(num_classes=2, class_counts=[1, 0])


@pytest.mark.parametrize("which", ["maca", "mhan", "hafem"])
def test_losses_decrease_on_a_tiny_problem(which, gen):
    torch.manual_seed(0)
    x = torch.randn(16, 4, 3, 3, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    conv = torch.nn.Conv2d(4, 4, 1)
    heads_proj = torch.nn.Conv2d(4, 8, 1)
    cls = torch.nn.Linear(4, 3)
    crit = {"maca": MACALoss(3, 4), "mhan": MHANLoss(), "hafem": HAFEMLoss(3, 4, class_counts=[5, 6, 5])}[which]
    params = [*conv.parameters(), *heads_proj.parameters(), *cls.parameters(), *crit.parameters()]
    opt = torch.optim.SGD(params, lr=0.05)

    def outputs():
        feats = conv(x)
        maps = torch.sigmoid(heads_proj(feats)).view(16, 2, 4, 3, 3)
        if which == "maca":
            heads = F.log_softmax(maps.mean((3, 4)), dim=1)
            return cls(heads.sum(1)), feats, heads
        if which == "mhan":
            return cls((feats * maps.amax(1)).mean((2, 3))), feats, list(maps.unbind(1))
        emb = feats.mean((2, 3))
        return cls(emb), emb

    losses = []
    for _ in range(40):
        loss = crit(outputs(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
