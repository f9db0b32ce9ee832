"""spatial_attention_map: Triton kernels (interpreter on CPU, or the GPU) vs a float64 reference.

Tolerances, relative ‖out−ref‖/‖ref‖ against float64 on the same (dtype-rounded) inputs:
- fp32 with IEEE dot: 1e-5 (engine.md's per-op Triton figure; reductions of up to 9·R terms
  accumulate in fp32 in another order than the reference)
- fp16: 1e-2 (engine.md; the 1×1 output y0 is stored in fp16 between the two GEMMs)
"""
import pytest
import torch

from ferfuse.kernels.compat import triton_runs_on
from ferfuse.kernels.spatial_attention import spatial_attention_map_reference, spatial_attention_map_triton
from helpers import assert_close

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not triton_runs_on(DEVICE), reason="needs a GPU or TRITON_INTERPRET=1")
RTOL = {torch.float32: 1e-5, torch.float16: 1e-2}


def _weights(K, C, R, O, dtype, gen):
    w1 = (torch.randn(K * R, C, generator=gen) / C ** 0.5).to(dtype)
    b1 = torch.randn(K * R, generator=gen)
    w3 = (torch.randn(K, O, R, 3, 3, generator=gen) / (9 * R) ** 0.5).to(dtype)
    b3 = 0.1 * torch.randn(K, O, generator=gen)
    return [t.to(DEVICE) for t in (w1, b1, w3, b3)]


def _reference(x, w1, b1, w3, b3):
    return spatial_attention_map_reference(*(t.double().cpu() for t in (x, w1, b1, w3, b3)))


def _run(x, w1, b1, w3, b3):
    B, _, H, W = x.shape
    out = torch.full((B, w3.shape[0], H, W), float("nan"), device=x.device)  # poisoned
    got = spatial_attention_map_triton(x, w1, b1, w3, b3, out=out)
    assert got.data_ptr() == out.data_ptr()
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,K,C,R,O,H,W", [
    (1, 4, 512, 256, 512, 7, 7),   # DAN's heads at batch 1
    (3, 1, 64, 32, 48, 7, 7),      # one head, O not a multiple of the tile
    (2, 2, 40, 24, 72, 5, 3),      # odd, non-square, channels not multiples of 16
    (2, 3, 32, 16, 32, 9, 11),     # prime-ish spatial size: several pixel tiles per image
    (1, 2, 16, 16, 16, 1, 1),      # a single pixel: every 3×3 tap but the centre is padding
])
def test_matches_float64_reference(dtype, B, K, C, R, O, H, W, gen):
    if dtype == torch.float16 and C == 512 and DEVICE.type == "cpu":
        pytest.skip("full-size fp16 under the interpreter is slow; the small shapes cover fp16")
    x = torch.randn(B, C, H, W, generator=gen).to(DEVICE, dtype)
    w = _weights(K, C, R, O, dtype, gen)
    got = _run(x, *w)
    assert_close(got.cpu(), _reference(x, *w), RTOL[dtype], "maps")


@pytest.mark.parametrize("layout", ["channels_last", "channel_slice", "transposed_hw"])
def test_strided_inputs(layout, gen):
    K, C, R, O = 2, 32, 16, 32
    base = torch.randn(2, 2 * C, 6, 6, generator=gen).to(DEVICE)
    x = {
        "channels_last": base[:, :C].contiguous(memory_format=torch.channels_last),
        "channel_slice": base[:, ::2],           # non-contiguous channel stride
        "transposed_hw": base[:, :C].transpose(2, 3),
    }[layout]
    assert not x.is_contiguous()
    w = _weights(K, C, R, O, torch.float32, gen)
    assert_close(_run(x, *w).cpu(), _reference(x, *w), RTOL[torch.float32], f"maps ({layout})")


def test_nan_propagates_where_the_reference_has_it(gen):
    K, C, R, O = 2, 32, 16, 32
    x = torch.randn(2, C, 7, 7, generator=gen)
    x[1, 3, 2, 5] = float("nan")
    x = x.to(DEVICE)
    w = _weights(K, C, R, O, torch.float32, gen)
    got, ref = _run(x, *w).cpu(), _reference(x, *w)
    assert torch.isnan(ref).any()
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    assert_close(got, ref, RTOL[torch.float32], "maps with NaN")


def test_bad_inputs_raise_before_launch(gen):
    K, C, R, O = 2, 32, 16, 32
    x = torch.randn(2, C, 7, 7, generator=gen).to(DEVICE)
    w1, b1, w3, b3 = _weights(K, C, R, O, torch.float32, gen)
    with pytest.raises(ValueError, match="4-D"):
        spatial_attention_map_triton(x[0], w1, b1, w3, b3)
    with pytest.raises(ValueError, match=r"w1: expected shape \(32, 16\).*x with 16 channels"):
        spatial_attention_map_triton(x[:, :16], w1, b1, w3, b3)
    with pytest.raises(TypeError, match="dtype"):
        spatial_attention_map_triton(x.to(torch.int32), w1, b1, w3, b3)
    with pytest.raises(TypeError, match="w3"):
        spatial_attention_map_triton(x, w1, b1, w3.half(), b3)
    with pytest.raises(ValueError, match="K×O×R×3×3"):
        spatial_attention_map_triton(x, w1, b1, w3[..., :1], b3)
    with pytest.raises(ValueError, match="out"):
        spatial_attention_map_triton(x, w1, b1, w3, b3, out=torch.empty(1, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gate_epilogue_matches_float64_reference(dtype, gen):
    """MACA-Net's gate: σ(Σ_o g_o·ReLU(z)_o + c) instead of the plain channel sum."""
    K, C, R, O = 3, 48, 32, 40
    x = torch.randn(2, C, 7, 5, generator=gen).to(DEVICE, dtype)
    w = _weights(K, C, R, O, dtype, gen)
    gate_w = (torch.randn(K, O, generator=gen) / O).to(DEVICE)
    gate_b = torch.randn(K, generator=gen).to(DEVICE)
    out = torch.full((2, K, 7, 5), float("nan"), device=DEVICE)
    got = spatial_attention_map_triton(x, *w, gate_w, gate_b, out=out)
    ref = spatial_attention_map_reference(*(t.double().cpu() for t in (x, *w, gate_w, gate_b)))
    assert_close(got.cpu(), ref, RTOL[dtype], "gated maps")
    with pytest.raises(ValueError, match="go together"):
        spatial_attention_map_triton(x, *w, gate_w, None)
