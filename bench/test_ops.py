"""Per-op latency: each fused unit against the eager modules it replaces (DAN's heads + fusion,
one ResNet block), and ferfuse's 1×1-conv GEMM against oneDNN's on HAFEM's narrow convs, on the
model's own tensors. Each checks its output against float64 before it is timed."""
import copy

import pytest
import torch
import torch.nn.functional as F

from ferfuse import models
from ferfuse.engine import pointwise
from ferfuse.engine.executors import ConvRunner
from ferfuse.engine.fused import unit_of
from ferfuse.engine.verify import allowed_error, errors


def _heads_eager(model):
    def run(feat):
        heads = torch.stack([getattr(model, f"cat_head{i}")(feat) for i in range(model.num_head)], 1)
        return model.bn(model.fc(torch.log_softmax(heads, 1).sum(1)))
    return run


def _check(out: torch.Tensor, fp32: torch.Tensor, f64: torch.Tensor, what: str):
    """out within the fp32 budget engine/verify.py gives a fused unit (k × fp32's own error
    against float64 + floor)."""
    err, own = errors(out, f64)[1], errors(fp32, f64)[1]
    assert err <= allowed_error(own, "fp32"), f"{what}: relative error {err:.1e}, fp32's own {own:.1e}"


@pytest.mark.parametrize("impl", ["eager", "ferfuse"])
def test_dan_heads(benchmark, record, impl, batch, device):
    """The 4 heads + fusion + classifier on a 512×7×7 trunk map."""
    torch.manual_seed(0)
    model = models.randomize_batchnorm(models.dan()).eval().to(device)
    feat = torch.randn(batch, 512, 7, 7, device=device)
    with torch.no_grad():
        fp32 = _heads_eager(model)(feat)
        f64 = _heads_eager(copy.deepcopy(model).double())(feat.double())
    if impl == "eager":
        fn = _heads_eager(model)
    else:
        model.optimize(backend="torch" if device == "cpu" else "auto")
        fn = unit_of(model).forward
    record(model="dan-heads", provider=impl, batch=batch, dtype="fp32", device=device,
           group=f"dan-heads-b{batch}-{device}")
    with torch.no_grad():
        out = fn(feat)
        _check(out[0] if isinstance(out, tuple) else out, fp32, f64, f"dan heads ({impl})")
        benchmark(fn, feat)


@pytest.mark.parametrize("impl", ["eager", "ferfuse"])
def test_resnet_block(benchmark, record, impl, batch, device):
    torch.manual_seed(0)
    model = models.randomize_batchnorm(models.dan()).eval().to(device)
    x = torch.randn(batch, 128, 28, 28, device=device)
    block = model.features[6][0]  # layer3.0: stride 2 with a downsample
    with torch.no_grad():
        fp32, f64 = block(x), copy.deepcopy(block).double()(x.double())
    if impl != "eager":
        model.optimize(backend="torch" if device == "cpu" else "auto")
    record(model="resnet-block", provider=impl, batch=batch, dtype="fp32", device=device,
           group=f"resnet-block-b{batch}-{device}")
    with torch.no_grad():
        _check(block(x), fp32, f64, f"resnet block ({impl})")
        benchmark(block, x)


# HAFEM's 1×1 convs whose outputs end in a part-filled 16-channel panel: the first stage's project
# convs (24 channels, 112×112) and the second's (240 -> 40, 56×56)
NARROW = {"k24-n24": (24, 24, 112), "k240-n40": (240, 40, 56)}


@pytest.mark.parametrize("shape", list(NARROW))
@pytest.mark.parametrize("impl", ["onednn", "ferfuse"])
def test_narrow_pointwise_conv(benchmark, record, impl, shape, batch, device):
    if device != "cpu":
        pytest.skip("ferfuse's GEMM is a CPU executor's")
    if impl == "ferfuse" and pointwise.unavailable_reason():
        pytest.skip(pointwise.unavailable_reason())
    k, n, hw = NARROW[shape]
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(n, k, 1, 1, generator=gen) / k ** 0.5, torch.randn(n, generator=gen)
    x = torch.randn(batch, k, hw, hw, generator=gen).contiguous(memory_format=torch.channels_last)
    runner = ConvRunner(weight, bias)
    fn = (lambda: runner.gemm().run(x)) if impl == "ferfuse" else (lambda: runner.direct(x))
    record(model=f"pointwise-{shape}", provider=impl, batch=batch, dtype="fp32", device=device,
           group=f"pointwise-{shape}-b{batch}-{device}")
    with torch.no_grad():
        fp32, f64 = F.conv2d(x, weight, bias), F.conv2d(x.double(), weight.double(), bias.double())
        _check(fn(), fp32, f64, f"1×1 conv {shape} ({impl})")
        benchmark(fn)
