"""Property tests (hypothesis): random shapes, strides, dtypes and head counts against the float64
reference, for both launchers (interpreter on CPU, or the GPU) and for the engine's head fusion.

Tolerances as in the per-kernel tests: fp32 1e-5, fp16 1e-2 (relative, against float64 on the
dtype-rounded inputs)."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferfuse.kernels.compat import triton_runs_on
from ferfuse.kernels.head_fusion import head_fusion_reference, head_fusion_triton
from ferfuse.kernels.spatial_attention import spatial_attention_map_reference, spatial_attention_map_triton
from helpers import assert_close

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not triton_runs_on(DEVICE), reason="needs a GPU or TRITON_INTERPRET=1")
RTOL = {torch.float32: 1e-5, torch.float16: 1e-2}
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _layout(x, kind):
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "transposed":
        return x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, W-major storage
    if kind == "sliced":
        wide = torch.cat([x, torch.zeros_like(x)], dim=1)
        return wide[:, : x.shape[1]]
    return x


@SETTINGS
@given(B=st.integers(1, 3), K=st.integers(1, 4), C=st.integers(1, 40), R=st.integers(1, 24), O=st.integers(1, 40),
       H=st.integers(1, 9), W=st.integers(1, 9), dtype=st.sampled_from([torch.float32, torch.float16]),
       layout=st.sampled_from(["contiguous", "channels_last", "transposed", "sliced"]),
       gate=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_spatial_attention_map_property(B, K, C, R, O, H, W, dtype, layout, gate, seed):
    g = torch.Generator().manual_seed(seed)
    x = _layout(torch.randn(B, C, H, W, generator=g).to(dtype), layout).to(DEVICE)
    w1 = (torch.randn(K * R, C, generator=g) / C ** 0.5).to(DEVICE, dtype)
    b1 = torch.randn(K * R, generator=g).to(DEVICE)
    w3 = (torch.randn(K, O, R, 3, 3, generator=g) / (9 * R) ** 0.5).to(DEVICE, dtype)
    b3 = torch.randn(K, O, generator=g).to(DEVICE)
    gw = torch.randn(K, O, generator=g).to(DEVICE) if gate else None
    gb = torch.randn(K, generator=g).to(DEVICE) if gate else None
    out = torch.full((B, K, H, W), float("nan"), device=DEVICE)
    got = spatial_attention_map_triton(x, w1, b1, w3, b3, gw, gb, out=out)
    ref = spatial_attention_map_reference(*(t.double().cpu() if t is not None else None
                                            for t in (x, w1, b1, w3, b3, gw, gb)))
    assert_close(got.cpu(), ref, RTOL[dtype], "maps")


@SETTINGS
@given(B=st.integers(1, 4), K=st.integers(1, 6), C=st.integers(1, 96), J=st.integers(1, 20), N=st.integers(1, 9),
       H=st.integers(1, 8), W=st.integers(1, 8), dtype=st.sampled_from([torch.float32, torch.float16]),
       layout=st.sampled_from(["contiguous", "channels_last", "transposed", "sliced"]), seed=st.integers(0, 2**31 - 1))
def test_head_fusion_property(B, K, C, J, N, H, W, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    x = _layout(torch.randn(B, C, H, W, generator=g).to(dtype), layout).to(DEVICE)
    maps = (5 * torch.rand(B, K, H, W, generator=g)).to(DEVICE)
    weights = [torch.randn(*s, generator=g).to(DEVICE) / 4 for s in ((K, J, C), (K, J), (K, C, J), (K, C), (N, C), (N,))]
    log_softmax = K > 1
    out = (torch.full((B, N), float("nan"), device=DEVICE, dtype=dtype),
           torch.full((B, K, C), float("nan"), device=DEVICE, dtype=dtype))
    logits, heads = head_fusion_triton(x, maps, *weights, log_softmax, out=out)
    ref_logits, ref_heads = head_fusion_reference(x.double().cpu(), maps.double().cpu(),
                                                  *(w.double().cpu() for w in weights), log_softmax)
    assert_close(logits.cpu(), ref_logits, RTOL[dtype] * 10 if dtype == torch.float16 else RTOL[dtype], "logits")
    assert_close(heads.cpu(), ref_heads, RTOL[dtype], "heads")
