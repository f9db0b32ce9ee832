"""Property test (hypothesis) of the engine: DAN-structured models with random head counts,
classes, channel widths and input sizes, optimised on the torch backend, against float64."""
import copy

import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ferfuse
from ferfuse.models import randomize_batchnorm
from ferfuse.models.dan import CrossAttentionHead, SpatialAttention, ChannelAttention
from helpers import assert_close


class SmallDAN(nn.Module):
    """DAN's structure with a small trunk and any channel width, so the property test runs fast."""

    def __init__(self, heads, classes, channels):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, channels, 3, stride=4, padding=1, bias=False),
                                      nn.BatchNorm2d(channels), nn.ReLU())
        self.num_head = heads
        for i in range(heads):
            head = CrossAttentionHead.__new__(CrossAttentionHead)
            nn.Module.__init__(head)
            head.sa = SpatialAttention(channels, max(1, channels // 2))
            head.ca = ChannelAttention(channels, max(1, channels // 16))
            setattr(self, f"cat_head{i}", head)
        self.fc = nn.Linear(channels, classes)
        self.bn = nn.BatchNorm1d(classes)

    def forward(self, x):
        x = self.features(x)
        heads = torch.stack([getattr(self, f"cat_head{i}")(x) for i in range(self.num_head)], 1)
        if heads.size(1) > 1:
            heads = torch.log_softmax(heads, 1)
        return self.bn(self.fc(heads.sum(1))), x, heads


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads=st.integers(1, 5), classes=st.integers(2, 9), channels=st.sampled_from([8, 16, 24, 48]),
       size=st.integers(8, 40), batch=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_engine_matches_float64_on_random_dan_structures(heads, classes, channels, size, batch, seed):
    torch.manual_seed(seed)
    model = randomize_batchnorm(SmallDAN(heads, classes, channels), seed=seed % 1000).eval()
    x = torch.randn(batch, 3, size, size)
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        expected = ref(x.double())[0]
    ferfuse.optimize(model, example_inputs=x)
    assert "dan_heads" in [e.pattern for e in ferfuse.report(model).fused]
    with torch.no_grad():
        assert_close(model(x)[0], expected, 1e-5, "logits")
