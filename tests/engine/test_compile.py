"""An optimised model still traces: torch.compile (inductor, CPU) runs it and agrees with it."""
import torch

from ferfuse import models
from ferfuse.models import randomize_batchnorm
from helpers import assert_close


def test_optimized_dan_runs_under_torch_compile(gen):
    model = randomize_batchnorm(models.dan()).eval().optimize()
    x = torch.randn(2, 3, 224, 224, generator=gen)
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        expected = model(x)
        got = compiled(x)
    assert_close(got[0], expected[0], 1e-5, "compiled logits")  # inductor may re-order fp32 sums
    assert_close(got[2], expected[2], 1e-5, "compiled heads")
