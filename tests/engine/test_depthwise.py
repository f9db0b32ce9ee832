"""Mobile blocks on CPU (MHAN's Mix_Depth_Wise, EfficientNet's MBConv): the C passes (mixed
depthwise conv with PReLU or SiLU, coordinate attention, squeeze-and-excitation) and their torch
form against float64, and the fused blocks inside optimize().

Tolerance: the engine's fp32 budget (engine/verify.py), 4 × the fp32 torch computation's own error
against float64 + 1e-6: the C loops sum the same products in another order, which errs like the
original does."""
import copy
import math
import threading

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ferfuse.engine import depthwise, mobile, optimize, report, revert, scratch
from ferfuse.engine.executors import ConvRunner, use_executor
from ferfuse.engine.fused import original_forward
from ferfuse.engine.depthwise import ACTIVATIONS, CoordinateAttention, MixedDepthwise, SqueezeExcite
from ferfuse.engine.patterns import mbconv, mix_depthwise
from ferfuse.models import randomize_batchnorm
from ferfuse.models.mixed_feature_net import Conv_block, CoordAtt, Mix_Depth_Wise
from helpers import assert_close, efficientnet_stages, fp32_budget, rel_error

pytestmark = pytest.mark.skipif(depthwise.LIBRARY.unavailable_reason() is not None,
                                reason=f"depthwise C kernels not built: {depthwise.LIBRARY.unavailable_reason()}")


def _mixed_reference(x, kernels, bias, stride, prelu):
    """The upstream MDConv: split the channels, one depthwise conv per group, concatenate."""
    if prelu is not None:
        x = F.prelu(x, prelu.to(x.dtype))
    parts = torch.split(x, [k.shape[0] for k in kernels], dim=1)
    biases = [None] * len(kernels) if bias is None else torch.split(bias, [k.shape[0] for k in kernels])
    return torch.cat([F.conv2d(p, k.to(x.dtype), None if b is None else b.to(x.dtype), stride, k.shape[-1] // 2, 1,
                               k.shape[0]) for p, k, b in zip(parts, kernels, biases)], dim=1)


# (batch, channels per group, kernel per group, H, W, stride, PReLU, bias): odd sizes, batch 1,
# one group, MHAN's 3/5/7/9 groups at stride 2 on a map whose size stride 2 does not divide, 40
# channels (two full blocks of 16 lanes and a tail). The register-blocked path (k 3, 5, 7 and
# stride 1, 2 on AVX2) takes 8-pixel blocks inside the width and clipped ones at its edges: widths
# of 17 and 30 (whole interior blocks, then a 1-pixel one), a map narrower than its kernel, groups
# whose boundaries are not multiples of 8 channels, and 70 channels (past the 64-channel work unit,
# a group straddling it)
MIXED = [
    (1, (5, 3), (3, 5), 9, 7, 1, True, False),
    (3, (16, 8, 8), (3, 5, 7), 14, 14, 2, True, True),
    (2, (4, 4, 4, 5), (3, 5, 7, 9), 13, 11, 2, False, True),
    (1, (17,), (3,), 7, 7, 1, True, False),
    (2, (40,), (5,), 15, 12, 1, True, True),
    (2, (24,), (3,), 6, 17, 1, False, True),
    (1, (29,), (7,), 9, 30, 1, False, True),
    (1, (19,), (5,), 5, 3, 2, False, True),
    (1, (12, 20), (3, 5), 11, 35, 2, True, False),
    (2, (60, 10), (5, 3), 8, 9, 1, False, True),
]


@pytest.mark.parametrize("case", MIXED, ids=[f"b{c[0]}-k{'-'.join(map(str, c[2]))}-{c[3]}x{c[4]}-s{c[5]}" for c in MIXED])
def test_mixed_depthwise_matches_float64(case, gen, poisoned_empty):
    n, channels, sizes, h, w, stride, with_prelu, with_bias = case
    c = sum(channels)
    kernels = [torch.randn(ch, 1, k, k, generator=gen) / k for ch, k in zip(channels, sizes)]
    bias = torch.randn(c, generator=gen) if with_bias else None
    prelu = torch.rand(c, generator=gen) * 0.5 if with_prelu else None
    x = torch.randn(n, c, h, w, generator=gen)
    expected = _mixed_reference(x.double(), kernels, bias, stride, prelu)
    fp32 = _mixed_reference(x, kernels, bias, stride, prelu)
    op = MixedDepthwise(kernels, bias, stride, prelu)
    assert op.out_size(h, w) == tuple(expected.shape[2:])
    got = op.run_c(x.clone().contiguous(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert_close(got, expected, fp32_budget(fp32, expected), "C mixed depthwise")
    assert_close(op.run_torch(x), expected, fp32_budget(fp32, expected), "torch mixed depthwise")


@pytest.mark.parametrize("act", ["silu", "relu", "hard_swish"])
@pytest.mark.parametrize("case", [(2, 24, 3, 10, 19, 1), (1, 37, 5, 14, 14, 2), (1, 16, 7, 7, 7, 1)], ids=str)
def test_depthwise_activation_epilogue_matches_float64(case, act, gen, poisoned_empty):
    """The activation applied as the output is stored, on the blocked and the per-pixel loops."""
    n, c, k, h, w, stride = case
    kernel, bias = torch.randn(c, 1, k, k, generator=gen) / k, torch.randn(c, generator=gen)
    x = torch.randn(n, c, h, w, generator=gen)
    expected = ACTIVATIONS[act][1](_mixed_reference(x.double(), [kernel], bias, stride, None))
    fp32 = ACTIVATIONS[act][1](_mixed_reference(x, [kernel], bias, stride, None))
    got = MixedDepthwise([kernel], bias, stride).run_c(x.contiguous(memory_format=torch.channels_last), act)
    assert_close(got, expected, fp32_budget(fp32, expected), f"C depthwise + {act}")


@pytest.mark.parametrize("act", [None, "silu", "relu"])
def test_a_channel_gets_the_same_bits_in_a_16_or_an_8_channel_block(act, gen):
    """24 channels are a 16-channel block and an 8-channel one on AVX-512 CPUs (8 + 8 + 8 on
    AVX2): rotating the channels by 8 moves each between the two widths, and its output, SiLU
    included, keeps every bit (depthwise.c's blocks and sigmoid.h's sigmoid8/sigmoid16 share one
    arithmetic per lane)."""
    kernel, bias = torch.randn(24, 1, 3, 3, generator=gen) / 3, torch.randn(24, generator=gen)
    x = torch.randn(2, 24, 11, 13, generator=gen) * 4  # SiLU's sigmoid over its whole curve
    rotated = torch.roll(torch.arange(24), 8)
    got = MixedDepthwise([kernel], bias, 1).run_c(x.contiguous(memory_format=torch.channels_last), act)
    moved = MixedDepthwise([kernel[rotated]], bias[rotated], 1).run_c(
        x[:, rotated].contiguous(memory_format=torch.channels_last), act)
    assert torch.equal(moved, got[:, rotated])


@pytest.mark.parametrize("act", [None, "silu", "relu"])
def test_depthwise_propagates_nan_to_the_windows_that_hold_it(act):
    """A NaN input pixel makes NaN exactly the outputs whose window holds it (IEEE: no fast-math)."""
    kernel = torch.rand(16, 1, 3, 3) + 0.1
    x = torch.rand(1, 16, 12, 12)
    x[0, 3, 5, 9] = float("nan")
    got = MixedDepthwise([kernel], None, 1).run_c(x.contiguous(memory_format=torch.channels_last), act)
    expected = torch.zeros(1, 16, 12, 12, dtype=torch.bool)
    expected[0, 3, 4:7, 8:11] = True
    assert torch.equal(got.isnan(), expected)


def test_depthwise_form_of_a_folded_conv(gen, poisoned_empty):
    """A ConvRunner of a depthwise conv offers the C loops as a form beside oneDNN direct, forced by
    the `depthwise` name; not with a residual (the loops apply the activation, not an add before
    it), nor for a conv the loops do not run (stride 3, dilated, a channel multiplier of 2)."""
    from ferfuse.engine.executors import ConvRunner

    weight, bias = torch.randn(24, 1, 5, 5, generator=gen) / 5, torch.randn(24, generator=gen)
    runner = ConvRunner(weight, bias, (2, 2), (2, 2), (1, 1), 24)
    assert runner.forms("silu") == (None, "depthwise") and runner.forms("silu", residual=True) == ()
    x = torch.randn(3, 24, 15, 13, generator=gen)
    expected = F.silu(F.conv2d(x.double(), weight.double(), bias.double(), 2, 2, 1, 24))
    fp32 = F.silu(F.conv2d(x, weight, bias, 2, 2, 1, 24))
    for executor in ("depthwise", "winograd", "onednn"):
        assert_close(runner.run(x, act="silu", executor=executor), expected, fp32_budget(fp32, expected), executor)
    for args in [((3, 3), (2, 2), (1, 1), 24), ((1, 1), (4, 4), (2, 2), 24)]:
        assert not ConvRunner(weight, bias, *args).can_take("depthwise")
    assert not ConvRunner(torch.randn(24, 1, 3, 3), None, (1, 1), (1, 1), (1, 1), 12).can_take("depthwise")


def test_mixed_depthwise_takes_any_layout_without_touching_a_copy(gen):
    """A non-contiguous input is copied to channels-last first; the PReLU then runs on the copy."""
    kernels = [torch.randn(6, 1, 3, 3, generator=gen), torch.randn(2, 1, 5, 5, generator=gen)]
    prelu = torch.full((8,), 0.25)
    op = MixedDepthwise(kernels, None, 1, prelu)
    x = torch.randn(2, 8, 10, 12, generator=gen)[:, :, 1:, 2:]  # a slice: neither layout
    before = x.clone()
    expected = _mixed_reference(x.double(), kernels, None, 1, prelu)
    assert_close(op.run_c(x), expected, fp32_budget(_mixed_reference(x, kernels, None, 1, prelu), expected))
    assert torch.equal(x, before)


def _coord_att(c, gen):
    ca = randomize_batchnorm(CoordAtt(c, c), seed=int(torch.randint(1000, (1,), generator=gen)))
    return ca.eval()


def _folded_gate(ca):
    from ferfuse.engine.algebra import fold_batchnorm, layer_bias

    w1, b1 = fold_batchnorm(ca.conv1.weight, ca.conv1.bias, ca.bn1)
    return CoordinateAttention(w1.flatten(1).float(), b1.float(), ca.conv2.weight.flatten(1), layer_bias(ca.conv2).float(),
                               ca.conv3.weight.flatten(1), layer_bias(ca.conv3).float())


@pytest.mark.parametrize("shape", [(1, 8, 7, 7), (3, 40, 5, 9), (2, 256, 14, 14)], ids=str)
def test_coordinate_attention_matches_float64(shape, gen, poisoned_empty):
    ca = _coord_att(shape[1], gen)
    y = torch.randn(*shape, generator=gen)
    with torch.no_grad():
        expected = copy.deepcopy(ca).double()(y.double())
        fp32 = ca(y)
    gate = _folded_gate(ca)
    tol = fp32_budget(fp32, expected)
    assert_close(gate.run_c(y.clone().contiguous(memory_format=torch.channels_last)), expected, tol, "C coordinate attention")
    assert_close(gate.run_torch(y), expected, tol, "torch coordinate attention")


@pytest.mark.parametrize("shape, act", [((1, 16, 7, 7), "silu"), ((3, 40, 5, 9), "relu"), ((2, 1152, 7, 7), "silu")],
                         ids=str)
def test_squeeze_excite_matches_float64(shape, act, gen, poisoned_empty):
    c, hidden = shape[1], max(1, shape[1] // 24)
    w1, b1 = torch.randn(hidden, c, generator=gen) / c ** 0.5, torch.randn(hidden, generator=gen)
    w2, b2 = torch.randn(c, hidden, generator=gen) / hidden ** 0.5, torch.randn(c, generator=gen)
    y = torch.randn(*shape, generator=gen)

    def reference(y, dtype):  # torchvision's SqueezeExcitation: fc1, act, fc2, sigmoid, times the input
        s = F.conv2d(y.to(dtype).mean((2, 3), keepdim=True), w1.to(dtype)[:, :, None, None], b1.to(dtype))
        s = F.conv2d(ACTIVATIONS[act][1](s), w2.to(dtype)[:, :, None, None], b2.to(dtype))
        return torch.sigmoid(s) * y.to(dtype)

    expected, fp32 = reference(y, torch.float64), reference(y, torch.float32)
    gate = SqueezeExcite(w1, b1, w2, b2, act)
    tol = fp32_budget(fp32, expected)
    assert_close(gate.run_c(y.clone().contiguous(memory_format=torch.channels_last)), expected, tol, "C squeeze-excite")
    assert_close(gate.run_torch(y), expected, tol, "torch squeeze-excite")
    with pytest.raises(ValueError, match="channels-last"):
        gate.run_c(y.clone())


def _assert_matches_float64(model, reference, what, inputs):
    """The optimised model against its float64 copy, within the fp32 budget, at each input's shape."""
    for x in inputs:
        with torch.no_grad():
            expected = reference(x.double())
            fp32 = copy.deepcopy(reference).float()(x)
            got = model(x)
        assert_close(got, expected, fp32_budget(fp32, expected), f"{what} at {tuple(x.shape)}")


def _trunk():
    """A MixedFeatureNet-shaped trunk: a stride-2 block with 3/5/7 groups, then a residual one."""
    return nn.Sequential(
        Conv_block(3, 16, kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
        Mix_Depth_Wise(16, 24, stride=(2, 2), groups=48, kernel_size=(3, 5, 7), split_out_channels=(16, 16, 16)),
        Mix_Depth_Wise(24, 24, residual=True, stride=(1, 1), groups=64, kernel_size=(3, 5),
                       split_out_channels=(48, 16)),
    )


@pytest.mark.parametrize("executor", ["onednn", "aten"])
def test_fused_blocks_match_float64_at_every_batch(executor, gen):
    model = randomize_batchnorm(_trunk(), seed=3).eval()
    reference = copy.deepcopy(model).double()
    optimize(model, executor=executor, example_inputs=(torch.randn(2, 3, 45, 45, generator=gen),), strict=True)
    rep = report(model)
    assert [e.modules for e in rep.fused if e.pattern == "mix_depthwise"] == [["1"], ["2"]]
    assert not rep.reverted
    _assert_matches_float64(model, reference, f"{executor} trunk", [
        torch.randn(1, 3, 45, 45, generator=gen), torch.randn(5, 3, 32, 40, generator=gen),
        torch.randn(3, 3, 33, 33, generator=gen).contiguous(memory_format=torch.channels_last)])


def test_not_h_swish_is_skipped_with_its_reason():
    model = randomize_batchnorm(_trunk(), seed=3).eval()
    model[2].CA.relu = nn.ReLU()
    optimize(model, example_inputs=(torch.randn(1, 3, 32, 32),))
    rep = report(model)
    assert any(s.module == "2" and "h-swish" in s.reason for s in rep.skipped)
    assert not any(s.module == "1" for s in rep.skipped)


def test_corrupted_fold_is_reverted(monkeypatch):
    """A folded bias off by 1e-3 relative: verification sees it and reverts that unit."""
    model = randomize_batchnorm(_trunk(), seed=3).eval()
    fold = mix_depthwise.FusedMixDepthwise.fold

    def corrupt(self, device):
        f = fold(self, device)
        if self.names() == ["2"]:
            f["project"].bias = f["project"].bias * (1 + 1e-3)
        return f

    monkeypatch.setattr(mix_depthwise.FusedMixDepthwise, "fold", corrupt)
    optimize(model, example_inputs=(torch.randn(2, 3, 32, 32),))
    assert [entry.modules for entry, _ in report(model).reverted] == [["2"]]


def test_without_a_compiler_blocks_run_as_torch_ops_and_the_report_says_so(monkeypatch, gen):
    monkeypatch.setattr(depthwise.LIBRARY, "unavailable_reason", lambda: "no C compiler (cc: not found)")
    model = randomize_batchnorm(_trunk(), seed=3).eval()
    reference = copy.deepcopy(model).double()
    optimize(model, executor="onednn", example_inputs=(torch.randn(2, 3, 32, 32),), strict=True)
    assert any("depthwise C kernels are unavailable (no C compiler" in n for n in report(model).notes)
    _assert_matches_float64(model, reference, "torch form", [torch.randn(2, 3, 32, 32, generator=gen)])


@pytest.mark.parametrize("executor", ["winograd", "onednn", "aten"])
def test_fused_mbconv_blocks_match_float64(executor, gen):
    model = efficientnet_stages(3)
    reference = copy.deepcopy(model).double()
    optimize(model, executor=executor, example_inputs=(torch.randn(2, 3, 64, 64, generator=gen),), strict=True)
    rep = report(model)
    fused = [e.modules[0] for e in rep.fused if e.pattern == "mbconv"]
    assert fused == ["1.0", "2.0", "2.1", "3.0", "3.1"] and not rep.reverted
    _assert_matches_float64(model, reference, f"{executor} EfficientNet stages",
                            [torch.randn(1, 3, 64, 64, generator=gen), torch.randn(3, 3, 45, 37, generator=gen)])
    if executor == "winograd":  # each depthwise conv's form per input shape, in the report
        tally = rep.form_tally()["depthwise convolutions"]
        assert set(tally) <= {"oneDNN direct", "ferfuse depthwise"} and sum(tally.values()) == 5 * 2, tally
        assert "depthwise" in rep.verified_forms


def test_mbconv_with_another_gate_is_skipped_with_its_reason():
    model = efficientnet_stages(3)
    model[2][1].block[2].scale_activation = nn.Hardsigmoid()
    optimize(model, example_inputs=(torch.randn(1, 3, 64, 64),))
    assert any(s.module == "2.1" and "Sigmoid" in s.reason for s in report(model).skipped)


def test_scratch_maps_are_channels_last_per_thread_and_slot_and_grow():
    scratch.release()
    a = scratch.scratch(0, (2, 8, 5, 3))
    assert a.shape == (2, 8, 5, 3) and a.is_contiguous(memory_format=torch.channels_last)
    b = scratch.scratch(0, (1, 4, 3, 3))  # smaller: the same buffer
    assert b.data_ptr() == a.data_ptr() and scratch.held_bytes() == 4 * math.prod(a.shape)
    assert scratch.scratch(1, (1, 4, 3, 3)).data_ptr() != a.data_ptr()
    big = scratch.scratch(0, (4, 8, 5, 3))  # larger: slot 0 grows
    assert big.shape == (4, 8, 5, 3) and scratch.held_bytes() == 4 * (math.prod(big.shape) + 36)
    seen = {}
    worker = threading.Thread(target=lambda: seen.update(ptr=scratch.scratch(0, (1, 4, 3, 3)).data_ptr()))
    worker.start()
    worker.join()
    assert seen["ptr"] != big.data_ptr()  # another thread: its own buffer
    scratch.release()
    assert scratch.held_bytes() == 0


def test_scratch_is_poisoned_like_torch_empty(poisoned_empty):
    scratch.scratch(0, (1, 2, 2, 2)).fill_(1.0)
    assert scratch.scratch(0, (1, 2, 2, 2)).isnan().all()


def _c_forms(monkeypatch):
    """Every conv on ferfuse's C form wherever it can take one, in place of each shape's timed choice."""
    monkeypatch.setattr(ConvRunner, "tuned_form", lambda self, x, act, residual, forms: next(
        (f for f in ("gemm", "depthwise") if f in forms), None))


@pytest.mark.parametrize("threads", [1, 2])
def test_mbconv_intermediates_in_scratch_maps(threads, gen, poisoned_empty, monkeypatch):
    """EfficientNet's blocks with every 1×1 conv on ferfuse's GEMM and every depthwise conv on the
    C loops (the expand and depthwise outputs in scratch maps), at batch 3, 1 and 3 in turn, from
    concurrent threads: every output matches float64, and none lies in a scratch buffer."""
    model = efficientnet_stages(3)
    reference = copy.deepcopy(model).double()
    optimize(model, executor="winograd", example_inputs=(torch.randn(2, 3, 48, 48, generator=gen),), strict=True)
    _c_forms(monkeypatch)
    inputs = [torch.randn(b, 3, 48, 48, generator=gen) for b in (3, 1, 3)]
    errors = []

    def work():
        try:
            scratch.release()
            with use_executor("winograd"):
                _assert_matches_float64(model, reference, f"{threads} thread(s)", inputs)
                with torch.no_grad():
                    out = model(inputs[0])
            # the expand and depthwise outputs, squeeze-excite's partial sums, the maps between blocks
            held = scratch.held()
            assert len(held) == 5, "the blocks did not run as one chained C call (engine/mobile.py)"
            assert all(out.untyped_storage().data_ptr() != flat.untyped_storage().data_ptr() for flat in held)
        except AssertionError as err:
            errors.append(err)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors


def _unchained(chain, stage, x):
    """nn.Sequential's own forward: each block called as a module, in place of BlockChain's."""
    return original_forward(stage, x)


def test_mbconv_block_as_one_c_call_is_bit_identical_to_its_four(gen, monkeypatch):
    """With every conv on its C form ("ferfuse-c", verified by optimize), each block from its
    second call at a shape on runs as one C call (engine/mobile.py): the same passes in the same
    order, so the same bits as the four calls; a block whose depthwise conv is on oneDNN does not."""
    model = efficientnet_stages(3)
    optimize(model, executor="winograd", example_inputs=(torch.randn(2, 3, 48, 48, generator=gen),), strict=True)
    assert "ferfuse-c" in report(model).verified_forms
    x = torch.randn(3, 3, 45, 37, generator=gen)
    runs = []
    real_run = mobile.MBConvCall.run
    monkeypatch.setattr(mobile.MBConvCall, "run", lambda self, *a: runs.append(1) or real_run(self, *a))
    monkeypatch.setattr(mbconv.BlockChain, "forward", _unchained)  # each block called on its own
    with torch.no_grad(), use_executor("ferfuse-c"):
        model(x)  # plans each conv's form at these shapes, one call at a time
        assert runs == []
        fused = model(x)
    assert len(runs) == 5  # blocks 1.0, 2.0, 2.1, 3.0, 3.1
    monkeypatch.setattr(mbconv.FusedMBConv, "block_call", lambda *a: None)
    with torch.no_grad(), use_executor("ferfuse-c"):
        assert torch.equal(model(x), fused)
    monkeypatch.undo()
    runs.clear()
    monkeypatch.setattr(mobile.MBConvCall, "run", lambda self, *a: runs.append(1) or real_run(self, *a))
    with torch.no_grad(), use_executor("pointwise"):  # depthwise convs on oneDNN: four calls a block
        model(x), model(x)
    assert runs == []


def _chain_runs(monkeypatch) -> list:
    """The number of blocks in each chained C call (mobile.MBConvChain.run) from now on."""
    runs = []
    real_run = mobile.MBConvChain.run
    monkeypatch.setattr(mobile.MBConvChain, "run", lambda self, x: runs.append(self.count) or real_run(self, x))
    return runs


@pytest.mark.parametrize("batch", [1, 3])
def test_blocks_in_a_row_run_as_one_c_call_bit_identical_to_their_calls(batch, gen, monkeypatch):
    """The trunk (an nn.Sequential of stages, each an nn.Sequential of blocks) runs its five blocks
    as one chained C call once each block has planned its own call at its shape: the same bits as
    the blocks called one by one, and the report says the blocks ran chained."""
    model = efficientnet_stages(3)
    optimize(model, executor="winograd", example_inputs=(torch.randn(2, 3, 48, 48, generator=gen),), strict=True)
    _c_forms(monkeypatch)
    x = torch.randn(batch, 3, 45, 37, generator=gen)
    runs = _chain_runs(monkeypatch)
    with torch.no_grad(), use_executor("winograd"):
        model(x)  # plans each conv's form, one call at a time
        model(x)  # each block's one call, block by block; the chain plans from them
        assert runs == []
        chained = model(x)
        assert runs == [5] and chained.is_contiguous(memory_format=torch.channels_last)
        with monkeypatch.context() as m:
            m.setattr(mbconv.BlockChain, "forward", _unchained)
            assert torch.equal(model(x), chained)
    assert report(model).form_tally()["MBConv blocks"] == {"one C call with the blocks beside it": 5}


def test_a_chain_runs_block_by_block_where_a_block_must_be_seen(gen, monkeypatch):
    """A hook on a block or on a stage, a block in training mode: that module runs as a module (the
    hook sees its call) and the blocks beside it stay chained; with the hook gone, all five chain
    again. Changed weights: block by block until the blocks have planned their new calls, and the
    output follows the weights now held."""
    model = efficientnet_stages(3)
    reference = copy.deepcopy(model).double()
    optimize(model, executor="winograd", example_inputs=(torch.randn(2, 3, 48, 48, generator=gen),), strict=True)
    x = torch.randn(2, 3, 45, 37, generator=gen)
    runs = _chain_runs(monkeypatch)
    with torch.no_grad(), use_executor("ferfuse-c"):
        model(x), model(x), model(x)
        assert runs == [5]
        for hooked, beside in ((model[2][1], [2, 2]), (model[3], [3, 2])):
            seen = []
            handle = hooked.register_forward_hook(lambda *a: seen.append(1))
            model(x)  # module by module: the plan with the hooked module as one
            runs.clear()
            model(x)
            assert seen == [1, 1] and runs == beside, (hooked, runs)
            handle.remove()
            model(x)
            runs.clear()
            model(x)
            assert runs == [5]
        model[2][0].train()
        model(x)
        runs.clear()
        model(x)
        assert runs == [1, 3]
        model[2][0].eval()
        state = {k: v * 1.1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        reference.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
        runs.clear()
        model(x), model(x)  # new folded weights: their convs plan, the blocks plan, block by block
        assert runs == []
        model(x)
        assert runs == [5]
    _assert_matches_float64(model, reference, "reloaded weights", [x])


def test_revert_restores_the_sequentials_own_forward(gen):
    model = efficientnet_stages(3)
    optimize(model, executor="winograd", example_inputs=(torch.randn(2, 3, 48, 48, generator=gen),))
    chained = [m for m in model.modules() if mbconv.CHAIN_ATTR in m.__dict__]
    assert set(map(id, chained)) == {id(model), id(model[1]), id(model[2]), id(model[3])}
    revert(model)
    assert not any(mbconv.CHAIN_ATTR in m.__dict__ or "forward" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("cache_mb", [None, 0.02, 1])
def test_mbconv_block_in_sample_groups(cache_mb, gen, monkeypatch):
    """A batch whose maps overflow half the last-level cache goes through each block's four passes
    a group of samples at a time (engine/mobile.py samples_per_pass): with a 20 kB cache one sample,
    with 1 MB groups of 1, 3 or 5 as the blocks' maps shrink, with an unknown size the whole batch.
    Every output matches float64, and the batch equals its samples run alone up to the gates' sums."""
    model = efficientnet_stages(3)
    reference = copy.deepcopy(model).double()
    optimize(model, executor="winograd", example_inputs=(torch.randn(2, 3, 48, 48, generator=gen),), strict=True)
    _c_forms(monkeypatch)
    monkeypatch.setattr(mobile, "LLC_BYTES", None if cache_mb is None else int(cache_mb * 2**20))
    x = torch.randn(5, 3, 48, 48, generator=gen)
    with use_executor("winograd"), torch.no_grad():
        model(x)  # plans each conv's form at this shape, one call at a time
        groups = []
        real = mobile.samples_per_pass
        monkeypatch.setattr(mobile, "samples_per_pass", lambda batch, size: groups.append(real(batch, size))
                            or groups[-1])
        _assert_matches_float64(model, reference, f"{cache_mb} MB cache", [x])
        batch, alone = model(x), torch.cat([model(x[i:i + 1]) for i in range(5)])
    at_five = set(groups[:5])  # the five blocks' groups at batch 5
    assert at_five == {5} if cache_mb is None else {1} if cache_mb == 0.02 else {1, 3, 5}, groups
    assert rel_error(batch, alone) < 1e-6  # fp32 rounding of the gates' sums in another order


@pytest.mark.parametrize("winner", ["one", "four"])
def test_a_block_of_mixed_forms_keeps_the_faster_of_one_call_and_four(winner, gen, monkeypatch):
    """Where a block's 1×1 convs chose oneDNN and its depthwise conv the C loops, the tuned
    executor times the block as one C call against its four calls and keeps the winner."""
    model = efficientnet_stages(3)
    optimize(model, executor="winograd", example_inputs=(torch.randn(2, 3, 48, 48, generator=gen),), strict=True)
    monkeypatch.setattr(ConvRunner, "tuned_form", lambda self, x, act, residual, forms: "depthwise"
                        if "depthwise" in forms else None)
    timed = []

    def fastest(candidates, run):
        for way in candidates:
            run(way)  # both ways run: neither may fail
        timed.append(tuple(candidates))
        return winner, {}

    monkeypatch.setattr(mbconv, "fastest", fastest)
    monkeypatch.setattr(mbconv.BlockChain, "forward", _unchained)  # each block called on its own
    runs = []
    real_run = mobile.MBConvCall.run
    monkeypatch.setattr(mobile.MBConvCall, "run", lambda self, *a: runs.append(1) or real_run(self, *a))
    x = torch.randn(3, 3, 40, 44, generator=gen)
    with torch.no_grad(), use_executor("winograd"):
        model(x)  # the convs' forms
        model(x)  # each block's timing, then the way it kept
        before = len(runs)
        model(x)
    assert timed == [("one", "four")] * 5
    assert len(runs) - before == (5 if winner == "one" else 0)
    way = "one C call" if winner == "one" else "four calls"
    assert report(model).form_tally()["MBConv blocks"] == {way: 5}
    assert f"tuned MBConv blocks (winograd executor), per block and input shape: {way} 5" in str(report(model))
