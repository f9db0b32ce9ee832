"""head_fusion: pooling + channel attention + head log-softmax + classifier in one Triton pass,
vs a float64 reference (interpreter on CPU, or the GPU).

Tolerances (relative, against float64 on the same dtype-rounded inputs):
- fp32: 1e-5 (IEEE dot for the pooling; the MLP reductions run in another order)
- fp16: 1e-2 (x is read in fp16; heads and logits are stored in fp16)
"""
import pytest
import torch

from ferfuse.kernels.compat import triton_runs_on
from ferfuse.kernels.head_fusion import head_fusion_reference, head_fusion_triton
from helpers import assert_close

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not triton_runs_on(DEVICE), reason="needs a GPU or TRITON_INTERPRET=1")
RTOL = {torch.float32: 1e-5, torch.float16: 1e-2}


def _inputs(B, K, C, J, N, H, W, dtype, gen):
    x = torch.randn(B, C, H, W, generator=gen).to(dtype)
    maps = 10 * torch.rand(B, K, H, W, generator=gen)  # ReLU'd channel sums: non-negative, large
    w1 = torch.randn(K, J, C, generator=gen) / C ** 0.5
    b1 = 0.1 * torch.randn(K, J, generator=gen)
    w2 = torch.randn(K, C, J, generator=gen) / J ** 0.5
    b2 = 0.1 * torch.randn(K, C, generator=gen)
    wfc = torch.randn(N, C, generator=gen) / C ** 0.5
    bfc = torch.randn(N, generator=gen)
    return [t.to(DEVICE) for t in (x, maps, w1, b1, w2, b2, wfc, bfc)]


def _run(args, log_softmax):
    x, maps, *_, wfc, _ = args
    B, K, C, N = x.shape[0], maps.shape[1], x.shape[1], wfc.shape[0]
    out = (torch.full((B, N), float("nan"), device=DEVICE, dtype=x.dtype),
           torch.full((B, K, C), float("nan"), device=DEVICE, dtype=x.dtype))
    logits, heads = head_fusion_triton(*args, log_softmax, out=out)
    assert logits.data_ptr() == out[0].data_ptr() and heads.data_ptr() == out[1].data_ptr()
    return logits.cpu(), heads.cpu()


def _reference(args, log_softmax):
    return head_fusion_reference(*(t.double().cpu() for t in args), log_softmax)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,K,C,J,N,H,W", [
    (1, 4, 512, 32, 7, 7, 7),    # DAN at batch 1
    (5, 4, 512, 32, 8, 7, 7),    # AffectNet-8, odd batch
    (2, 1, 512, 32, 7, 7, 7),    # one head: no log_softmax, as DAN does
    (3, 3, 96, 12, 5, 5, 3),     # small, non-power-of-two everything
    (2, 2, 64, 8, 3, 13, 11),    # more pixels than one BLOCK_P
])
def test_matches_float64_reference(dtype, B, K, C, J, N, H, W, gen):
    args = _inputs(B, K, C, J, N, H, W, dtype, gen)
    log_softmax = K > 1
    logits, heads = _run(args, log_softmax)
    ref_logits, ref_heads = _reference(args, log_softmax)
    assert_close(logits, ref_logits, RTOL[dtype], "logits")
    assert_close(heads, ref_heads, RTOL[dtype], "heads")


def test_channels_last_and_sliced_x(gen):
    args = _inputs(2, 4, 64, 8, 7, 7, 7, torch.float32, gen)
    wide = torch.randn(2, 128, 7, 7, generator=gen).to(DEVICE)
    for x in (args[0].contiguous(memory_format=torch.channels_last), wide[:, ::2]):
        args[0] = x
        logits, heads = _run(args, True)
        ref_logits, ref_heads = _reference(args, True)
        assert_close(logits, ref_logits, RTOL[torch.float32], "logits")
        assert_close(heads, ref_heads, RTOL[torch.float32], "heads")


def test_nan_in_one_sample_stays_in_that_sample(gen):
    args = _inputs(3, 4, 64, 8, 7, 7, 7, torch.float32, gen)
    args[0][1, 5, 3, 3] = float("nan")
    logits, heads = _run(args, True)
    ref_logits, ref_heads = _reference(args, True)
    assert torch.equal(torch.isnan(logits), torch.isnan(ref_logits))
    assert torch.isnan(logits[1]).all() and not torch.isnan(logits[[0, 2]]).any()
    assert_close(logits, ref_logits, RTOL[torch.float32], "logits with NaN")


def test_bad_inputs_raise_before_launch(gen):
    args = _inputs(2, 4, 64, 8, 7, 7, 7, torch.float32, gen)
    bad = list(args)
    bad[1] = args[1][:, :, :5]
    with pytest.raises(ValueError, match="maps: expected shape"):
        head_fusion_triton(*bad, True)
    bad = list(args)
    bad[2] = args[2][:3]
    with pytest.raises(ValueError, match=r"w1: expected shape \(4, 8, 64\)"):
        head_fusion_triton(*bad, True)
    bad = list(args)
    bad[6] = args[6].double()
    with pytest.raises(TypeError, match="wfc"):
        head_fusion_triton(*bad, True)
