"""Per-op latency: each fused unit against the eager modules it replaces (DAN's heads + fusion,
one ResNet block), on the model's own tensors."""
import pytest
import torch

from ferfuse import models
from ferfuse.engine.fused import unit_of


def _heads_eager(model):
    def run(feat):
        heads = torch.stack([getattr(model, f"cat_head{i}")(feat) for i in range(model.num_head)], 1)
        return model.bn(model.fc(torch.log_softmax(heads, 1).sum(1)))
    return run


@pytest.mark.parametrize("impl", ["eager", "ferfuse"])
def test_dan_heads(benchmark, record, impl, batch, device):
    """The 4 heads + fusion + classifier on a 512×7×7 trunk map."""
    torch.manual_seed(0)
    model = models.randomize_batchnorm(models.dan()).eval().to(device)
    feat = torch.randn(batch, 512, 7, 7, device=device)
    if impl == "eager":
        fn = _heads_eager(model)
    else:
        model.optimize(backend="torch" if device == "cpu" else "auto")
        fn = unit_of(model).forward
    record(model="dan-heads", provider=impl, batch=batch, dtype="fp32", device=device,
           group=f"dan-heads-b{batch}-{device}")
    with torch.no_grad():
        benchmark(fn, feat)


@pytest.mark.parametrize("impl", ["eager", "ferfuse"])
def test_resnet_block(benchmark, record, impl, batch, device):
    torch.manual_seed(0)
    model = models.randomize_batchnorm(models.dan()).eval().to(device)
    x = torch.randn(batch, 128, 28, 28, device=device)
    block = model.features[6][0]  # layer3.0: stride 2 with a downsample
    if impl != "eager":
        model.optimize(backend="torch" if device == "cpu" else "auto")
    record(model="resnet-block", provider=impl, batch=batch, dtype="fp32", device=device,
           group=f"resnet-block-b{batch}-{device}")
    with torch.no_grad():
        benchmark(block, x)
