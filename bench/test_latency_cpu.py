"""CPU latency: eager PyTorch vs ferfuse (torch backend), whole DAN and the heads alone.

    python -m pytest bench/test_latency_cpu.py --benchmark-enable --benchmark-only

Each group holds the providers side by side in one process; compare medians within a group.
"""
import pytest
import torch

from ferfuse import engine, models
from ferfuse.engine.fused import unit_of


def _dan(seed=0):
    torch.manual_seed(seed)
    return models.randomize_batchnorm(models.dan(), seed=seed).eval()


def _heads_eager(model):
    def run(feat):
        heads = torch.stack([getattr(model, f"cat_head{i}")(feat) for i in range(model.num_head)], 1)
        return model.bn(model.fc(torch.log_softmax(heads, 1).sum(1)))
    return run


@pytest.mark.parametrize("provider", ["eager", "ferfuse-torch"])
@pytest.mark.parametrize("batch", [1, 4, 8])
def test_dan(benchmark, record, provider, batch):
    model = _dan()
    if provider == "ferfuse-torch":
        model.optimize(backend="torch")
    x = torch.randn(batch, 3, 224, 224)
    record(model="dan", provider=provider, batch=batch, dtype="fp32", device="cpu", group=f"dan-b{batch}")
    with torch.no_grad():
        benchmark(model, x)


@pytest.mark.parametrize("provider", ["eager", "ferfuse-torch"])
@pytest.mark.parametrize("batch", [1, 8])
def test_dan_heads(benchmark, record, provider, batch):
    """The 4 heads + fusion + classifier on a 512×7×7 trunk map: eager modules vs the fused unit."""
    model = _dan()
    feat = torch.randn(batch, 512, 7, 7)
    if provider == "eager":
        fn = _heads_eager(model)
    else:
        model.optimize(backend="torch")
        fn = unit_of(model).forward
    record(model="dan-heads", provider=provider, batch=batch, dtype="fp32", device="cpu",
           group=f"dan-heads-b{batch}")
    with torch.no_grad():
        benchmark(fn, feat)
    assert engine.is_optimized(model) == (provider != "eager")
