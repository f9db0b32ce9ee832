"""HAFEM's head on CPU: the CBAM C pass, the lone 1×1 projection on the tuned runner, and the
TransformerEncoderLayer with its linear layers on the tuned runners, against float64.

Tolerance: the engine's fp32 budget (engine/verify.py), 4 × the fp32 torch computation's own error
against float64 + 1e-6: each path sums the same products in another order."""
import copy

import pytest
import torch
import torch.nn as nn

from ferfuse.engine import depthwise, optimize, report
from ferfuse.engine.depthwise import CBAMGate
from ferfuse.engine.patterns import transformer
from ferfuse.kernels.cbam import cbam_reference
from ferfuse.models import randomize_batchnorm
from ferfuse.models.hafem import CBAM
from helpers import assert_close, fp32_budget

pytestmark = pytest.mark.skipif(depthwise.LIBRARY.unavailable_reason() is not None,
                                reason=f"C kernels not built: {depthwise.LIBRARY.unavailable_reason()}")


@pytest.mark.parametrize("shape, hidden, k, bias", [((1, 2048, 7, 7), 128, 7, False), ((3, 70, 5, 9), 5, 3, True),
                                                    ((2, 33, 1, 1), 4, 7, True), ((4, 80, 9, 7), 8, 5, False)],
                         ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_cbam_c_pass_matches_float64(shape, hidden, k, bias, layout, gen, poisoned_empty):
    b, c, h, w = shape
    x = torch.randn(b, 2 * c if layout == "sliced" else c, h, w, generator=gen)
    x = x[:, ::2] if layout == "sliced" else x.contiguous(memory_format=torch.channels_last) \
        if layout == "channels_last" else x
    w1, b1 = torch.randn(hidden, c, generator=gen) / c ** 0.5, torch.randn(hidden, generator=gen)
    w2, b2 = torch.randn(c, hidden, generator=gen) / hidden ** 0.5, torch.randn(c, generator=gen)
    sw, sb = torch.randn(1, 2, k, k, generator=gen) / k, (torch.randn(1, generator=gen) if bias else None)
    before = x.clone()

    def reference(dtype):
        return cbam_reference(x.to(dtype), *(t[None].to(dtype) for t in (w1, b1, w2, b2)), sw.to(dtype),
                              None if sb is None else sb.to(dtype))

    expected = reference(torch.float64)
    got = CBAMGate(w1, b1, w2, b2, sw, sb).run_c(x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert_close(got, expected, fp32_budget(reference(torch.float32), expected), "C CBAM")
    assert torch.equal(x, before)  # its input is left as it is


def test_cbam_c_pass_keeps_nan_where_torch_does():
    x = torch.randn(1, 16, 5, 5)
    x[0, 3, 2, 2] = float("nan")
    gate = CBAMGate(torch.randn(2, 16), torch.zeros(2), torch.randn(16, 2), torch.zeros(16), torch.randn(1, 2, 3, 3),
                    None)
    assert torch.isnan(gate.run_c(x)).all()  # as torch: the NaN reaches both pools, so every gate


class _Head(nn.Module):
    """HAFEM's head on a small trunk: conv-BN-SiLU, CBAM, a lone 1×1 projection into tokens, one
    TransformerEncoderLayer, the mean token, a classifier."""

    def __init__(self, norm_first=True, batch_first=True, activation="relu"):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 64, 3, stride=4, padding=1), nn.BatchNorm2d(64), nn.SiLU())
        self.cbam = CBAM(64, reduction=8, spatial_kernel=5)
        self.proj = nn.Conv2d(64, 48, 1)
        self.transformer = nn.TransformerEncoderLayer(48, 4, 96, batch_first=batch_first, norm_first=norm_first,
                                                      activation=activation)
        self.batch_first = batch_first
        self.fc = nn.Linear(48, 5)

    def forward(self, x):
        tokens = self.proj(self.cbam(self.trunk(x))).flatten(2).transpose(1, 2)
        if not self.batch_first:
            tokens = tokens.transpose(0, 1)
        return self.fc(self.transformer(tokens).mean(1 if self.batch_first else 0))


def _optimized(seed=0, **kw):
    torch.manual_seed(seed)
    model = randomize_batchnorm(_Head(**kw), seed=seed).eval()
    reference = copy.deepcopy(model).double()
    optimize(model, example_inputs=torch.randn(2, 3, 30, 26), strict=True)
    return model, reference


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_head_matches_float64_at_every_batch(norm_first, batch_first, activation, gen, monkeypatch):
    model, reference = _optimized(norm_first=norm_first, batch_first=batch_first, activation=activation)
    rep = report(model)
    assert {e.pattern: e.modules for e in rep.fused if e.pattern != "conv_bn"} == {
        "cbam": ["cbam"], "conv": ["proj"], "transformer_layer": ["transformer"]}, str(rep)
    for x in (torch.randn(1, 3, 30, 26, generator=gen), torch.randn(5, 3, 17, 33, generator=gen),
              torch.randn(3, 3, 28, 28, generator=gen).contiguous(memory_format=torch.channels_last)):
        with torch.no_grad():
            expected, fp32, got = reference(x.double()), copy.deepcopy(reference).float()(x), model(x)
        assert_close(got, expected, fp32_budget(fp32, expected), f"head at {tuple(x.shape)}")
    calls = []  # the C CBAM pass and the fused layer really run: each once a forward
    attend, cbam_c = transformer.FusedTransformerLayer.attend, CBAMGate.run_c
    monkeypatch.setattr(transformer.FusedTransformerLayer, "attend", lambda *a: calls.append("attend") or attend(*a))
    monkeypatch.setattr(CBAMGate, "run_c", lambda *a: calls.append("cbam") or cbam_c(*a))
    with torch.no_grad():
        model(x)
    assert calls == ["cbam", "attend"]


def test_masked_calls_run_the_layers_own_forward(gen):
    model, _ = _optimized()
    layer = model.transformer
    tokens = torch.randn(2, 6, 48, generator=gen)
    mask = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    with torch.no_grad():
        got = layer(tokens, src_key_padding_mask=mask)
        expected = type(layer).forward(layer, tokens, src_key_padding_mask=mask)
    assert torch.equal(got, expected)


def test_a_wrong_attention_core_is_reverted(monkeypatch):
    """Keys and values swapped: verification sees it and reverts the layer, and only the layer."""
    def swapped(self, qkv, shape, seq_first):
        d = shape[-1]
        return transformer.FusedTransformerLayer.__dict__["_real_attend"](
            self, torch.cat([qkv[:, :d], qkv[:, 2 * d:], qkv[:, d:2 * d]], 1), shape, seq_first)

    monkeypatch.setattr(transformer.FusedTransformerLayer, "_real_attend", transformer.FusedTransformerLayer.attend,
                        raising=False)
    monkeypatch.setattr(transformer.FusedTransformerLayer, "attend", swapped)
    torch.manual_seed(0)
    model = randomize_batchnorm(_Head(), seed=0).eval()
    optimize(model, example_inputs=torch.randn(2, 3, 30, 26))
    rep = report(model)
    assert [e.modules for e, _ in rep.reverted] == [["transformer"]], str(rep)
    assert {"cbam", "conv"} <= {e.pattern for e in rep.fused}


def test_an_overriding_subclass_is_skipped_with_its_reason():
    class Custom(nn.TransformerEncoderLayer):
        def forward(self, src, *args, **kwargs):
            return super().forward(src, *args, **kwargs) * 2

    model = _Head()
    model.transformer = Custom(48, 4, 96, batch_first=True)
    optimize(model.eval(), example_inputs=torch.randn(1, 3, 30, 26))
    assert any(s.module == "transformer" and "overrides" in s.reason for s in report(model).skipped)
