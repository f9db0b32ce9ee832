"""ferfuse's 1×1 convolution GEMM (engine/pointwise.c) against float64, alone and as a form the
winograd executor times against oneDNN.

Tolerance: the engine's fp32 budget (engine/verify.py), 4 × the error of the same convolution in
fp32 torch against float64 + 1e-6: the GEMM sums the same products in another order (blocks of
256 input channels, FMA rounding once per multiply-add), which errs like the original does."""
import pytest
import torch
import torch.nn.functional as F

from ferfuse.engine import executors, pointwise
from ferfuse.engine.executors import ConvRunner
from helpers import rel_error

pytestmark = pytest.mark.skipif(pointwise.unavailable_reason() is not None,
                                reason=f"pointwise GEMM not built: {pointwise.unavailable_reason()}")

TORCH_ACT = {None: lambda t: t, "relu": torch.relu, "silu": F.silu}


def _expected(x, weight, bias, act, residual):
    y = F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    return TORCH_ACT[act](y if residual is None else y + residual.to(x.dtype))


def _check(got, x, weight, bias, act, residual):
    expected = _expected(x.double(), weight, bias, act, residual)
    budget = 4 * rel_error(_expected(x, weight, bias, act, residual), expected) + 1e-6
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert not torch.isnan(got).any(), "an output element was never written"
    assert rel_error(got, expected) <= budget, f"error {rel_error(got, expected):.2e} over budget {budget:.2e}"


# (batch, in channels, out channels, H, W): batch 1; pixel counts that are not multiples of the
# 6-row tile (49, 15, 1); output channels under one 16-channel panel, with a tail (40, 13) and
# exact (32); input channels of 1, and past one 256-channel block (300, 600: partial sums)
# pixel counts that leave every tail tile of 1 to 5 rows (49 = 8·6 + 1; 10, 5, 2, 9); with AVX-512,
# four panels at a time (64 channels: 240 and 384 with none left, 130 with a tail panel after two
# such groups, 50 with the tail inside one, there past a 256-channel block)
SHAPES = [(1, 40, 240, 7, 7), (2, 24, 40, 5, 3), (1, 1, 13, 1, 1), (3, 300, 32, 4, 5), (1, 600, 17, 3, 3),
          (2, 64, 384, 14, 14), (1, 70, 33, 2, 5), (5, 16, 24, 1, 1), (1, 8, 16, 1, 2), (2, 24, 130, 4, 4),
          (1, 300, 50, 3, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("act", [None, "relu", "silu"])
def test_gemm_matches_float64(shape, act, gen, poisoned_empty):
    n, k, c, h, w = shape
    x = torch.randn(n, k, h, w, generator=gen)
    weight, bias = torch.randn(c, k, 1, 1, generator=gen) / k ** 0.5, torch.randn(c, generator=gen)
    residual = torch.randn(n, c, h, w, generator=gen) if act != "relu" else None
    got = pointwise.PointwiseConv(weight, bias).run(x, act, residual)
    _check(got, x, weight, bias, act, residual)


def test_gemm_layouts_and_no_bias(gen, poisoned_empty):
    """Any input layout (NCHW, channels-last, a non-contiguous slice), no bias, and NaN kept."""
    weight = torch.randn(24, 20, 1, 1, generator=gen)
    conv = pointwise.PointwiseConv(weight, None)
    base = torch.randn(2, 40, 9, 11, generator=gen)
    for x in (base[:, :20], base[:, ::2].contiguous(memory_format=torch.channels_last), base[:, 20:].contiguous()):
        _check(conv.run(x, "silu"), x, weight, None, "silu", None)
    x = torch.randn(1, 20, 3, 3, generator=gen)
    x[0, 5, 1, 2] = float("nan")
    for act in (None, "relu", "silu"):  # a NaN input pixel gives NaN in every channel there, as torch
        got = conv.run(x, act)
        assert torch.equal(torch.isnan(got), torch.isnan(_expected(x, weight, None, act, None)))
    with pytest.raises(ValueError, match="expected 20 input channels, got 19"):
        conv.run(torch.randn(1, 19, 3, 3))


@pytest.mark.parametrize("n", [21, 55, 70])
def test_grouped_strided_gemm(gen, n):
    """gemm_groups as the Winograd stage calls it: G GEMMs side by side in one row-major x and y
    (rows ldx and ldy apart, wider than the groups: the columns past them stay untouched), no bias,
    K past one 256-channel block, N with a tail panel (55: inside a group of four panels, which
    AVX-512 computes at once; 70: after one); each group against float64, so a tile that wrote past
    its group's N would be seen in the next group's columns or past the last."""
    groups, rows, k = 3, 29, 300
    ldx, ldy = groups * k + 5, groups * n + 7
    x = torch.randn(rows, ldx, generator=gen)
    weight = torch.randn(groups * n, k, generator=gen) / k ** 0.5
    y = torch.full((rows, ldy), float("nan"))
    pointwise.gemm_groups(x, ldx, pointwise.pack(weight, groups), None, y, ldy, rows, k, n, groups)
    for g in range(groups):
        xg, wg = x[:, g * k:(g + 1) * k], weight[g * n:(g + 1) * n]
        expected = xg.double() @ wg.double().t()
        budget = 4 * rel_error(xg @ wg.t(), expected) + 1e-6
        assert rel_error(y[:, g * n:(g + 1) * n], expected) <= budget, f"group {g}"
    assert torch.isnan(y[:, groups * n:]).all(), "a column past the groups was written"


def test_runner_times_gemm_against_onednn(gen, monkeypatch):
    """On the winograd executor a 1×1 conv is timed once per problem between oneDNN (None) and the
    GEMM and keeps the choice; `pointwise` forces the GEMM; onednn and aten never run it; convs it
    cannot take (stride 2, grouped, padded) run direct, untimed."""
    timed, calls = [], []
    real_fastest, real_run = executors.fastest, pointwise.PointwiseConv.run
    monkeypatch.setattr(executors, "fastest", lambda cands, run, runs=executors.TIMED_RUNS:
                        timed.append(tuple(cands)) or real_fastest(cands, run, runs))
    monkeypatch.setattr(executors, "FORM_BY_PROBLEM", {})
    monkeypatch.setattr(pointwise.PointwiseConv, "run", lambda self, *a, **kw: calls.append(1) or real_run(self, *a, **kw))
    weight, bias = torch.randn(48, 16, 1, 1, generator=gen), torch.randn(48, generator=gen)
    runner = ConvRunner(weight, bias)
    x = torch.randn(2, 16, 10, 9, generator=gen)
    for _ in range(3):
        _check(runner.run(x, act="silu", executor="winograd"), x, weight, bias, "silu", None)
    assert timed == [(None, "gemm")]
    assert executors.FORM_BY_PROBLEM[runner.problem(x, "silu", None)] in (None, "gemm")
    calls.clear()
    _check(runner.run(x, act="relu", executor="pointwise"), x, weight, bias, "relu", None)
    assert calls == [1]
    runner.run(x, act="silu", executor="onednn")
    runner.run(x, act="silu", executor="aten")
    runner.run(x, act="sigmoid", executor="winograd")  # an epilogue the GEMM does not apply: direct
    assert calls == [1] and len(timed) == 1
    for other in (ConvRunner(weight, bias, stride=(2, 2)), ConvRunner(weight[:, :8], bias, groups=2),
                  ConvRunner(weight, bias, padding=(1, 1))):
        assert not other.pointwise_eligible and other.forms("silu") == ()


def test_a_library_is_rebuilt_when_any_file_it_includes_changes(tmp_path):
    """mobile.c includes pointwise.c, which includes activation.h, which includes sigmoid.h: the
    build's cache key reads all of them, so an edit to the deepest one gives a new library."""
    import shutil

    from ferfuse.engine import mobile, native

    for name in ("mobile.c", "pointwise.c", "depthwise.c", "activation.h", "sigmoid.h"):
        shutil.copy(mobile.SOURCE.with_name(name), tmp_path / name)
    before = native._with_local_includes(tmp_path / "mobile.c")
    assert b"FERFUSE_SIGMOID_H" in before and before.count(b"#ifndef FERFUSE_ACTIVATION_H") == 1  # read once
    with open(tmp_path / "sigmoid.h", "a") as f:
        f.write("/* edited */\n")
    assert native._with_local_includes(tmp_path / "mobile.c") != before
