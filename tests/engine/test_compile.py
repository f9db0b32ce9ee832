"""An optimised model under torch.compile (CPU): the compiled call runs the optimised forward as it
is, since its fused units are C kernels the compiler cannot see into. Before, dynamo broke the
graph at every unit, compiled 23 graphs for DAN, hit its recompile limit (each unit's frame
recompiled per unit) and ran DAN 1.26× and HAFEM 1.28× slower than the optimised model uncompiled.
Under torch.export and torch.jit.script a clear error says what to do; torch.jit.trace records
the folded graph."""
import contextlib
import copy
import warnings

import pytest
import torch
import torch.nn as nn

import ferfuse
from ferfuse import models
from ferfuse.engine.executors import use_executor
from ferfuse.engine.verify import first_tensor
from ferfuse.models import randomize_batchnorm
from helpers import assert_close, efficientnet_stages, fp32_budget


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


@pytest.mark.parametrize("executor", [None, "ferfuse-c"])
def test_torch_jit_trace_records_the_folded_graph(executor, gen):
    """A user's torch.jit.trace of an optimised model records standard aten ops on the folded
    weights, whichever form its convs took: before, DAN's trace failed inside oneDNN's fused conv
    ("unsupported input list type: Scalar?"), and the C forms' writes were invisible to it."""
    cases = [(randomize_batchnorm(models.dan(num_heads=2), seed=3).eval(), 112), (efficientnet_stages(3), 64)]
    for original, size in cases:
        reference = copy.deepcopy(original).double()
        model = ferfuse.engine.optimize(copy.deepcopy(original),
                                        example_inputs=(torch.randn(2, 3, size, size, generator=gen),))
        x = torch.randn(2, 3, size, size, generator=gen)
        with torch.no_grad(), use_executor(executor) if executor else contextlib.nullcontext():
            model(x)  # the forms (and the chained MBConv run) planned for this shape
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(model, x, check_trace=False)
        ops = {node.kind() for node in traced.inlined_graph.nodes()}
        assert all(op.startswith(("aten::", "prim::")) for op in ops), sorted(ops)
        fresh = torch.randn(3, 3, size, size, generator=gen)
        with torch.no_grad():
            got, fp32, expected = (first_tensor(m(t)) for m, t in
                                   [(traced, fresh), (original, fresh), (reference, fresh.double())])
        assert_close(got, expected, fp32_budget(fp32, expected), f"{type(original).__name__} traced")


def test_torch_jit_trace_of_one_fused_module(gen):
    """A trace of one fused module (a 1×1 conv whose BatchNorm and ReLU it folded) on ferfuse's
    GEMM: before, the trace recorded only the output's torch.empty (the GEMM writes through a raw
    pointer) and returned garbage; the fold now happens outside the trace, whose graph then needs
    no parameter from outside the traced module."""
    original = randomize_batchnorm(nn.Sequential(nn.Conv2d(32, 64, 1), nn.BatchNorm2d(64), nn.ReLU(),
                                                 nn.Conv2d(64, 8, 3, padding=1)), seed=1).eval()
    model = ferfuse.engine.optimize(copy.deepcopy(original), example_inputs=(torch.randn(2, 32, 16, 16),))
    assert [e.pattern for e in ferfuse.report(model).fused] == ["conv_bn", "conv"]
    x = torch.randn(2, 32, 16, 16, generator=gen)
    with torch.no_grad(), use_executor("pointwise"):
        model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model[0], x, check_trace=False)
    fresh = torch.randn(3, 32, 16, 16, generator=gen)
    first_three = original[:3]
    with torch.no_grad():
        got, fp32, expected = traced(fresh), first_three(fresh), copy.deepcopy(first_three).double()(fresh.double())
    assert_close(got, expected, fp32_budget(fp32, expected), "traced conv_bn")


def test_torch_jit_script_of_an_optimised_model_says_what_to_do():
    model = randomize_batchnorm(models.dan(num_heads=2)).eval().optimize(verify=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in torch 2.14
        with pytest.raises(RuntimeError, match=r"torch.jit.script cannot compile an optimised DAN.*torch.jit.trace"):
            torch.jit.script(model)
    ferfuse.engine.revert(model)
    assert not hasattr(model, "__prepare_scriptable__")
