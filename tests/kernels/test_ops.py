"""torch.library registration: schemas, fake implementations and the CPU kernels agree."""
import torch

from ferfuse.kernels import ops


def _spatial_args(gen):
    K, C, R, O = 2, 32, 16, 24
    return (torch.randn(2, C, 5, 5, generator=gen), torch.randn(K * R, C, generator=gen),
            torch.randn(K * R, generator=gen), torch.randn(K, O, R, 3, 3, generator=gen),
            torch.randn(K, O, generator=gen))


def _fusion_args(gen):
    B, K, C, J, N = 2, 3, 32, 8, 7
    return (torch.randn(B, C, 5, 5, generator=gen), torch.rand(B, K, 5, 5, generator=gen),
            torch.randn(K, J, C, generator=gen), torch.randn(K, J, generator=gen),
            torch.randn(K, C, J, generator=gen), torch.randn(K, C, generator=gen),
            torch.randn(N, C, generator=gen), torch.randn(N, generator=gen), True)


def test_opcheck_spatial_attention_map(gen):
    torch.library.opcheck(torch.ops.ferfuse.spatial_attention_map.default, _spatial_args(gen))


def test_opcheck_dan_head_fusion(gen):
    torch.library.opcheck(torch.ops.ferfuse.dan_head_fusion.default, _fusion_args(gen))


def test_fake_shapes_match_real(gen):
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = _spatial_args(gen)
    real = ops.spatial_attention_map(*args)
    with FakeTensorMode() as mode:
        fake = ops.spatial_attention_map(*(mode.from_tensor(a) for a in args))
    assert fake.shape == real.shape and fake.dtype == real.dtype
    args = _fusion_args(gen)
    real = ops.dan_head_fusion(*args)
    with FakeTensorMode() as mode:
        fake = ops.dan_head_fusion(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
    assert [f.shape for f in fake] == [r.shape for r in real]
