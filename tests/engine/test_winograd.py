"""Winograd F(4×4, 3×3) and F(2×2, 3×3) convolutions (engine/winograd.py, winograd.c) against
float64 direct convolution, and the `winograd` executor inside optimize().

Tolerances: the float64 reference algorithm equals direct convolution to 1e-12 (only rounding of
exact rational transforms). The fp32 C path is held to 1e-5 relative: F(4×4)'s transforms scale by
up to 8 and sum 36 products per tile, and measure ~1.5e-6 per convolution here (F(2×2) and direct
oneDNN ~1.5e-7); inside optimize() the engine's budget for Winograd forms is 16 × the original
path's own error (engine/verify.py)."""
import pytest
import torch
import torch.nn.functional as F

from ferfuse import models
from ferfuse.engine import native, optimize, pointwise, report, winograd
from ferfuse.engine import executors
from ferfuse.engine.executors import ConvRunner
from ferfuse.engine.export import reference_path
from ferfuse.models import randomize_batchnorm
from helpers import assert_close, rel_error

pytestmark = pytest.mark.skipif(winograd.unavailable_reason() is not None,
                                reason=f"Winograd transforms not built: {winograd.unavailable_reason()}")

OP_TOL = 1e-5  # one fp32 Winograd convolution against float64 direct (measured ~1.5e-6)
# batch 1, odd and non-multiple-of-4 maps, a single pixel, channel counts off the 16-lane blocks
SHAPES = [(1, 64, 64, 56, 56), (2, 20, 36, 13, 7), (3, 17, 5, 1, 1), (1, 16, 32, 4, 9), (2, 48, 16, 14, 14)]
TILES = [4, 2]


def _case(gen, n, c, k, h, w, groups=1):
    x = torch.randn(n, c, h, w, generator=gen)
    weight = torch.randn(k, c // groups, 3, 3, generator=gen) / (9 * c / groups) ** 0.5
    bias = torch.randn(k, generator=gen)
    return x, weight, bias


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("shape,groups", [(s, 1) for s in SHAPES] + [((2, 32, 48, 7, 7), 4)])
def test_reference_algorithm_is_direct_convolution(gen, shape, groups, tile):
    x, weight, bias = _case(gen, *shape, groups=groups)
    expected = F.conv2d(x.double(), weight.double(), bias.double(), padding=1, groups=groups)
    got = winograd.winograd_reference(x, weight, bias, groups, winograd.VARIANTS[tile])
    assert_close(got, expected, 1e-12, "float64 Winograd")


ENGINES = [e for e in winograd.GEMM_ENGINES if e != "gemm" or pointwise.unavailable_reason() is None]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu,residual", [(False, False), (True, False), (True, True)])
def test_conv_matches_float64(gen, shape, relu, residual, tile, engine):
    x, weight, bias = _case(gen, *shape)
    res = torch.randn(shape[0], shape[2], *shape[3:], generator=gen) if residual else None
    expected = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    if res is not None:
        expected = expected + res.double()
    if relu:
        expected = torch.relu(expected)
    got = winograd.WinogradConv(weight, bias, tile=tile).run(x, relu=relu, residual=res, engine=engine)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert_close(got, expected, OP_TOL, "Winograd conv")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("tile", TILES)
def test_grouped_conv(gen, tile, engine):
    x, weight, bias = _case(gen, 2, 64, 96, 9, 11, groups=4)
    expected = F.conv2d(x.double(), weight.double(), bias.double(), padding=1, groups=4)
    got = winograd.WinogradConv(weight, bias, groups=4, tile=tile).run(x, engine=engine)
    assert_close(got, expected, OP_TOL, "grouped")


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed"])
def test_input_layouts(gen, layout):
    x, weight, bias = _case(gen, 2, 24, 32, 15, 15)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.randn(2, 48, 15, 30, generator=gen)[:, ::2, :, ::2]
    else:
        x = x.transpose(2, 3)
    expected = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    assert_close(winograd.WinogradConv(weight, bias).run(x), expected, OP_TOL, layout)


@pytest.mark.parametrize("tile", TILES)
def test_transforms_write_every_element(gen, tile):
    """Both C transforms against the float64 algorithm, on buffers poisoned with NaN first."""
    variant = winograd.VARIANTS[tile]
    m_, a = variant.tile, variant.alpha
    n, c, k, h, w = 2, 20, 18, 9, 13
    x, weight, bias = _case(gen, n, c, k, h, w)
    th, tw = winograd.tiles(h, w, m_)
    lib = winograd.library()
    xc = x.contiguous(memory_format=torch.channels_last)
    v = torch.full((n, a * a * c, th, tw), float("nan")).contiguous(memory_format=torch.channels_last)
    getattr(lib, variant.c_input)(xc.data_ptr(), v.data_ptr(), n, h, w, c, th, tw, 2)
    xp = F.pad(x.double(), (1, m_ * tw + 1 - w, 1, m_ * th + 1 - h))
    d = xp.unfold(2, a, m_).unfold(3, a, m_)
    v_ref = torch.einsum("ui,nctwij,vj->nuvctw", variant.bt, d, variant.bt).reshape(n, a * a * c, th, tw)
    assert_close(v, v_ref, 1e-6, "input transform")

    m = torch.randn(n, a * a * k, th, tw, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.full((n, k, h, w), float("nan")).contiguous(memory_format=torch.channels_last)
    getattr(lib, variant.c_output)(m.data_ptr(), bias.data_ptr(), None, y.data_ptr(), n, h, w, k, th, tw, 0, 2)
    mt = m.double().view(n, a, a, k, th, tw)
    y_ref = torch.einsum("iu,nuvktw,jv->nktiwj", variant.at, mt, variant.at).reshape(n, k, m_ * th, m_ * tw)
    assert_close(y, y_ref[:, :, :h, :w] + bias.double().view(1, -1, 1, 1), 1e-6, "output transform")


def test_nan_and_inf_propagate_like_ieee(gen):
    """A NaN input reaches every output whose tile reads it (a superset of direct convolution's
    3×3 neighbourhood: optimize() sends non-finite inputs to the original forward for that reason);
    ReLU keeps NaN as torch.relu does."""
    x, weight, bias = _case(gen, 1, 16, 16, 12, 12)
    x[0, 3, 5, 6] = float("nan")
    got = winograd.WinogradConv(weight, bias).run(x, relu=True)
    direct = torch.relu(F.conv2d(x, weight, bias, padding=1))
    assert torch.isnan(got[torch.isnan(direct)]).all()
    assert not torch.isnan(got[:, :, 9:, :]).any()  # tiles that never read row 5 stay finite


def test_bad_inputs_are_named(gen):
    x, weight, bias = _case(gen, 1, 16, 16, 8, 8)
    conv = winograd.WinogradConv(weight, bias)
    with pytest.raises(ValueError, match="16 channels"):
        conv.run(torch.randn(1, 8, 8, 8))
    with pytest.raises(ValueError, match="float32"):
        conv.run(x.double())
    with pytest.raises(ValueError, match="residual"):
        conv.run(x, residual=torch.randn(1, 16, 4, 4))
    with pytest.raises(ValueError, match="float32 CPU"):
        winograd.WinogradConv(weight.double(), bias)


def test_runner_times_its_tile_per_shape(gen, monkeypatch):
    """On the `winograd` executor a dense 3×3 stride-1 conv (ReLU or no activation) times direct,
    F(4×4) and F(2×2) on the first call of each input shape and keeps the fastest, each tile's
    GEMMs timed on oneDNN against ferfuse's GEMM once per GEMM shape; forced forms run their tile
    and engine; anything else runs direct."""
    timed, calls = [], []
    real_fastest = executors.fastest

    def counting(candidates, run, runs=executors.TIMED_RUNS):
        timed.append(tuple(candidates))
        return real_fastest(candidates, run, runs)

    monkeypatch.setattr(executors, "fastest", counting)
    monkeypatch.setattr(executors, "FORM_BY_PROBLEM", {})  # no timing left by an earlier test
    monkeypatch.setattr(winograd, "ENGINE_BY_PROBLEM", {})
    real_run, real_gemm = winograd.WinogradConv.run, winograd.WinogradConv.gemm
    monkeypatch.setattr(winograd.WinogradConv, "run",
                        lambda self, x, **kw: calls.append(self.variant.tile) or real_run(self, x, **kw))
    monkeypatch.setattr(winograd.WinogradConv, "gemm",
                        lambda self, v, engine: calls.append(engine) or real_gemm(self, v, engine))
    weight, bias = torch.randn(8, 8, 3, 3, generator=gen), torch.randn(8, generator=gen)
    runner = ConvRunner(weight, bias, padding=(1, 1))
    x = torch.randn(2, 8, 14, 20, generator=gen)
    expected = F.relu(F.conv2d(x.double(), weight.double(), bias.double(), padding=1))
    for _ in range(3):  # timed once, then the kept choice
        assert_close(runner.run(x, act="relu", executor="winograd"), expected, OP_TOL, "tuned")
    # the forms, and within the first call of each tile the engine of its GEMMs
    assert timed == [(None, 4, 2), winograd.GEMM_ENGINES, winograd.GEMM_ENGINES]
    chosen = executors.FORM_BY_PROBLEM[runner.problem(x, "relu", None)]
    assert chosen in (None, 4, 2)
    # only the kept tile keeps its engine (the report's tally), and only that engine's packing
    engines = runner.winograd_engines()
    assert len(engines) == (chosen is not None) and set(engines) <= set(winograd.GEMM_ENGINES)
    for tile, conv in runner._winograd.items():
        assert (conv._panels is not None) == (tile == chosen and engines == ["gemm"])
        assert len(conv._packed) == (tile == chosen and engines == ["onednn"])
    timed.clear()
    twin = ConvRunner(weight * 2, bias, padding=(1, 1))  # the same problem: the timing is shared
    twin.run(x, act="relu", executor="winograd")
    assert timed == []
    runner.run(x[:1], executor="winograd")  # another shape and epilogue: timed again
    assert timed == [(None, 4, 2), winograd.GEMM_ENGINES, winograd.GEMM_ENGINES]
    timed.clear()
    small = torch.randn(1, 8, 3, 3)
    runner.run(small, executor="winograd")  # under one F(2×2) input tile: direct, untimed
    assert executors.FORM_BY_PROBLEM[runner.problem(small, None, None)] is None and timed == []
    for form, tile, engine in (("winograd-f4", 4, "onednn"), ("winograd-f2", 2, "onednn"),
                               ("winograd-f4-gemm", 4, "gemm"), ("winograd-f2-gemm", 2, "gemm")):
        calls.clear()
        assert_close(runner.run(x, act="relu", executor=form), expected, OP_TOL, form)
        assert calls == [tile, engine]
    calls.clear()
    runner.run(x, act="sigmoid", executor="winograd")  # not an epilogue the C transforms apply
    runner.run(x, executor="onednn")
    runner.run(x, executor="aten")
    assert calls == [] and timed == []
    assert not ConvRunner(weight, bias, stride=(2, 2), padding=(1, 1)).winograd_eligible
    assert not ConvRunner(weight[:, :4], bias, padding=(1, 1), groups=2).winograd_eligible  # 4-channel groups


@pytest.mark.parametrize("form", ["winograd-f4", "winograd-f2", "winograd-f4-gemm", "winograd-f2-gemm"])
def test_a_grouped_conv_runs_as_grouped_winograd(gen, form):
    """DAN's and MACA-Net's merged head convs are grouped (one group per head): each group of at
    least a 16-channel panel each way is a GEMM per tile position, in one grouped call; depthwise and
    narrow-group convs stay direct."""
    n, c, k, groups = 2, 64, 96, 4
    x, weight, bias = _case(gen, n, c, k, 9, 7, groups=groups)
    runner = ConvRunner(weight, bias, padding=(1, 1), groups=groups)
    assert runner.winograd_eligible and runner.forms("relu") == (None, 4, 2)
    expected = F.relu(F.conv2d(x.double(), weight.double(), bias.double(), padding=1, groups=groups))
    assert_close(runner.run(x, act="relu", executor=form), expected, OP_TOL, form)
    assert runner.planned(tuple(x.shape), "relu", False, form)[0] == (4 if "-f4" in form else 2)
    assert not ConvRunner(torch.randn(c, 1, 3, 3), None, padding=(1, 1), groups=c).winograd_eligible


def test_optimize_with_winograd_executor(gen):
    model = randomize_batchnorm(models.dan(), seed=6).eval()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        expected = model.double()(x.double())
    model.float()
    with torch.no_grad():
        original = rel_error(model(x)[0], expected[0])
    optimize(model, executor="winograd", example_inputs=x[:1])
    rep = report(model)
    assert rep.executors == ("winograd",) and not rep.reverted
    # every form a tuned conv takes, a Winograd tile's GEMMs on either engine; DAN's heads open
    # with a 1×1 conv, which may run as the GEMM
    assert rep.verified_forms == ("onednn", "winograd-f4", "winograd-f4-gemm", "winograd-f2", "winograd-f2-gemm",
                                  "pointwise")
    with torch.no_grad():
        got = model(x)
    assert rel_error(got[0], expected[0]) <= 4 * original, "logits beyond 4× the original fp32 error"
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    # a NaN input runs the original forward and gives NaN exactly where the reference does
    x[1, :, 100:110, 50:60] = float("nan")
    with torch.no_grad():
        got = model(x)[0]
        with reference_path(model):
            expected = model(x)[0]
    assert torch.equal(torch.isnan(got), torch.isnan(expected))


def test_unbuildable_transforms_are_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("FERFUSE_CACHE", str(tmp_path))
    with pytest.raises(native.NativeUnavailable, match="no C compiler"):
        native.build(winograd.SOURCE)
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails without a word
    with pytest.raises(native.NativeUnavailable, match="false failed on winograd.c: exit status 1"):
        native.build(winograd.SOURCE)
    monkeypatch.setattr(winograd, "unavailable_reason", lambda: "no C compiler (cc: not found)")
    model = randomize_batchnorm(models.dan(num_heads=1), seed=7).eval()
    with pytest.raises(ValueError, match="cannot be built here: no C compiler"):
        optimize(model, executor="winograd")
    optimize(model)
    assert "winograd" not in report(model).executors
    assert any("Winograd convolutions unavailable (no C compiler" in n for n in report(model).notes)
