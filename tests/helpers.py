"""Helpers shared by the test suites: upstream-structured models written outside ferfuse, the
recorded upstream keys, and a comparison that explains its failures."""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def read_keys(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """The upstream state_dict keys and shapes from ../shared/spec/keys (copied to tests/data)."""
    rows = []
    for line in (DATA / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (‖out − ref‖ itself when the reference is all zeros)."""
    out, ref = out.double(), ref.double()
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def fp32_budget(fp32: torch.Tensor, f64: torch.Tensor) -> float:
    """The relative error a fused path may have against float64: 4× the original fp32 path's own
    on the same input, plus a floor for outputs fp32 computes all but exactly."""
    return 4 * rel_error(fp32, f64) + 1e-6


def assert_close(out: torch.Tensor, ref: torch.Tensor, rtol: float, what: str = "output"):
    """Relative-norm comparison that, on failure, says how many elements are off, where, and
    counts NaN and Inf separately (FlagGems style). NaN never passes unless the reference has it
    at the same place."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    out64, ref64 = out.double(), ref.double()
    nan_out, nan_ref = torch.isnan(out64), torch.isnan(ref64)
    assert torch.equal(nan_out, nan_ref), (
        f"{what}: NaN in {int(nan_out.sum())} elements, reference {int(nan_ref.sum())}")
    inf_out = torch.isinf(out64) & ~nan_out
    assert torch.equal(inf_out, torch.isinf(ref64)), f"{what}: Inf in {int(inf_out.sum())} elements"
    keep = ~nan_ref & ~torch.isinf(ref64)
    err = rel_error(out64[keep], ref64[keep]) if keep.any() else 0.0
    if not err <= rtol:
        diff = (out64 - ref64).abs().nan_to_num(0)
        scale = ref64.abs().max().clamp_min(1e-30)
        bad = (diff > rtol * scale).nonzero()[:5].tolist()
        raise AssertionError(
            f"{what}: relative error {err:.3e} > {rtol:.0e}; {int((diff > rtol * scale).sum())} of "
            f"{out.numel()} elements off by more than rtol·max|ref|; first at {bad}: "
            + ", ".join(f"{out64[tuple(i)].item():.6g} vs {ref64[tuple(i)].item():.6g}" for i in bad))


# --- a DAN written outside ferfuse: the upstream structure under other class names -------------

class UpstreamSpatial(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1x1 = nn.Sequential(nn.Conv2d(512, 256, kernel_size=1), nn.BatchNorm2d(256))
        self.conv_3x3 = nn.Sequential(nn.Conv2d(256, 512, kernel_size=3, padding=1), nn.BatchNorm2d(512))
        self.conv_1x3 = nn.Sequential(nn.Conv2d(256, 512, kernel_size=(1, 3), padding=(0, 1)), nn.BatchNorm2d(512))
        self.conv_3x1 = nn.Sequential(nn.Conv2d(256, 512, kernel_size=(3, 1), padding=(1, 0)), nn.BatchNorm2d(512))
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.conv1x1(x)
        y = self.relu(self.conv_3x3(y) + self.conv_1x3(y) + self.conv_3x1(y))
        y = y.sum(dim=1, keepdim=True)
        return x * y


class UpstreamChannel(nn.Module):
    def __init__(self):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.attention = nn.Sequential(nn.Linear(512, 32), nn.BatchNorm1d(32), nn.ReLU(inplace=True),
                                       nn.Linear(32, 512), nn.Sigmoid())

    def forward(self, sa):
        sa = self.gap(sa)
        sa = sa.view(sa.size(0), -1)
        return sa * self.attention(sa)


class UpstreamHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.sa = UpstreamSpatial()
        self.ca = UpstreamChannel()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        return self.ca(self.sa(x))


class UpstreamDAN(nn.Module):
    """The official DAN code's structure and forward, written independently of ferfuse."""

    def __init__(self, num_class=7, num_head=4):
        super().__init__()
        resnet = torchvision.models.resnet18(weights=None)
        self.features = nn.Sequential(*list(resnet.children())[:-2])
        self.num_head = num_head
        for i in range(num_head):
            setattr(self, "cat_head%d" % i, UpstreamHead())
        self.sig = nn.Sigmoid()
        self.fc = nn.Linear(512, num_class)
        self.bn = nn.BatchNorm1d(num_class)

    def forward(self, x):
        x = self.features(x)
        heads = [getattr(self, "cat_head%d" % i)(x) for i in range(self.num_head)]
        heads = torch.stack(heads).permute([1, 0, 2])
        if heads.size(1) > 1:
            heads = F.log_softmax(heads, dim=1)
        out = self.bn(self.fc(heads.sum(dim=1)))
        return out, x, heads


# --- MHAN as the upstream code's own class presents it: the same attributes, no `input_size` ----

class UpstreamMHAN(nn.Module):
    """hanyao666/MHAN `networks/backbone.py`'s structure and forward: ferfuse's MHAN blocks (whose
    keys match upstream's) in a plain nn.Module that names no input size, as upstream's does."""

    def __init__(self, num_class=7, num_head=2):
        super().__init__()
        from ferfuse import models

        src = models.mhan(num_classes=num_class, num_heads=num_head)
        self.features = src.features
        self.num_head = num_head
        for i in range(num_head):
            setattr(self, "cat_head%d" % i, getattr(src, "cat_head%d" % i))
        self.ela, self.Linear, self.fc, self.bn = src.ela, src.Linear, src.fc, src.bn

    def forward(self, x):
        x = self.ela(self.features(x))
        heads = [getattr(self, "cat_head%d" % i)(x) for i in range(self.num_head)]
        y = heads[0]
        for i in range(1, self.num_head):
            y = torch.max(y, heads[i])
        y = self.Linear(x * y)
        y = y.view(y.size(0), -1)
        return self.fc(y), x, heads


def efficientnet_stages(stages: int = 3) -> nn.Module:
    """torchvision's own EfficientNet-B0 stem and first `stages` stages, BatchNorm statistics
    randomised: MBConv blocks with and without an expand conv, 3×3 and 5×5 (from the third
    stage), stride 1 and 2, with and without the residual; run as one C call each, chained."""
    from ferfuse.models import randomize_batchnorm

    return randomize_batchnorm(torchvision.models.efficientnet_b0(weights=None).features[:stages + 1], seed=5).eval()

