"""optimize(backend="triton"): on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (how CI
runs the kernels' own code). Logits within 1e-4 relative of a float64 reference (engine.md's fp32
Triton figure)."""
import copy

import pytest
import torch

import ferfuse
from ferfuse import models
from ferfuse.kernels.compat import triton_runs_on
from ferfuse.models import randomize_batchnorm
from helpers import UpstreamDAN, assert_close

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not triton_runs_on(DEVICE), reason="needs a GPU or TRITON_INTERPRET=1")
LOGITS_RTOL = 1e-4


def _reference(model, x):
    ref = copy.deepcopy(model).double()
    ferfuse.revert(ref)
    with torch.no_grad():
        return ref(x.double())[0]


@pytest.mark.parametrize("build,heads,size", [
    (lambda: models.dan(num_classes=7, num_heads=4), 4, 224),
    (lambda: UpstreamDAN(num_class=7, num_head=1), 1, 224),
    (lambda: UpstreamDAN(num_class=8, num_head=4), 4, 224),
    (lambda: UpstreamDAN(num_class=7, num_head=2), 2, 160),
], ids=["dan", "upstream-1head", "upstream-8classes", "upstream-160px"])
def test_triton_backend_matches_float64(build, heads, size, gen):
    torch.manual_seed(0)
    model = randomize_batchnorm(build(), seed=2).eval().to(DEVICE)
    x = torch.randn(2, 3, size, size, generator=gen).to(DEVICE)
    ref = _reference(model, x)
    ferfuse.optimize(model, backend="triton", example_inputs=x)
    rep = ferfuse.report(model)
    assert rep.backend == "triton" and "dan_heads" not in [e.pattern for e, _ in rep.reverted]
    entry = next(e for e in rep.fused if e.pattern == "dan_heads")
    assert entry.modules[:heads] == [f"cat_head{i}" for i in range(heads)]
    with torch.no_grad():
        logits, _, head_out = model(x)
    assert head_out.shape == (2, heads, 512)
    assert_close(logits.cpu(), ref.cpu(), LOGITS_RTOL, "logits")


def test_nan_input_gives_nan_where_the_reference_has_it(gen):
    model = randomize_batchnorm(UpstreamDAN(num_head=2), seed=3).eval().to(DEVICE)
    x = torch.randn(3, 3, 224, 224, generator=gen)
    x[1, 0, 100, 100] = float("nan")
    x = x.to(DEVICE)
    ref = _reference(model, x)
    ferfuse.optimize(model, backend="triton")
    with torch.no_grad():
        logits = model(x)[0].cpu()
    assert torch.isnan(ref[1]).all()
    assert torch.equal(torch.isnan(logits), torch.isnan(ref.cpu()))
    assert_close(logits, ref.cpu(), LOGITS_RTOL, "logits")


def test_triton_backend_needs_the_interpreter_or_cuda():
    from ferfuse.engine.optimize import resolve_backend
    from ferfuse.kernels import compat

    if compat.INTERPRET:
        assert resolve_backend("triton", torch.device("cpu")) == "triton"
        assert resolve_backend("auto", torch.device("cpu")) == "torch"
    else:
        with pytest.raises(ValueError, match="TRITON_INTERPRET"):
            resolve_backend("triton", torch.device("cpu"))


def test_heads_wider_than_the_fusion_tile_are_skipped_with_the_reason(monkeypatch):
    """The Triton head fusion keeps a sample's channels in registers (at most BLOCK_C_MAX): a wider
    model is skipped before any launch, with the limit named, not failed inside optimize()."""
    from ferfuse.engine.patterns import dan_heads

    monkeypatch.setattr(dan_heads, "BLOCK_C_MAX", 256)  # DAN's 512 channels now exceed the tile
    model = randomize_batchnorm(UpstreamDAN(num_head=2), seed=3).eval().to(DEVICE)
    ferfuse.optimize(model, backend="triton", verify=False)
    rep = ferfuse.report(model)
    assert "dan_heads" not in [e.pattern for e in rep.fused]
    assert any(s.pattern == "dan_heads" and "at most 256 channels" in s.reason for s in rep.skipped)
