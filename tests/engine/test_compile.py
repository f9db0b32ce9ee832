"""An optimised model under torch.compile (CPU): the compiled call runs the optimised forward as it
is, since its fused units are C kernels the compiler cannot see into. Before, dynamo broke the
graph at every unit, compiled 23 graphs for DAN, hit its recompile limit (each unit's frame
recompiled per unit) and ran DAN 1.26× and HAFEM 1.28× slower than the optimised model uncompiled."""
import pytest
import torch

from ferfuse import models
from ferfuse.models import randomize_batchnorm


def test_torch_compile_runs_the_optimised_forward_as_it_is(gen):
    model = randomize_batchnorm(models.dan()).eval().optimize()
    x = torch.randn(2, 3, 224, 224, generator=gen)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model)
    with torch.no_grad():
        expected = model(x)
        for _ in range(2):
            got = compiled(x)
            assert all(torch.equal(g, e) for g, e in zip(got, expected))  # the same kernels ran
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0
    assert not torch._dynamo.utils.counters["unimplemented"]  # no recompile limit reached


def test_torch_export_of_an_optimised_cpu_model_says_what_to_do(gen):
    """torch.export traces with fake tensors, which the C kernels cannot take: before, it failed
    deep inside the guard ("Could not guard on data-dependent expression")."""
    model = randomize_batchnorm(models.dan(num_heads=2)).eval().optimize(verify=False)
    with pytest.raises(RuntimeError, match=r"torch.export cannot trace an optimised DAN on CPU.*export_onnx"):
        torch.export.export(model, (torch.randn(2, 3, 224, 224, generator=gen),))
