"""Every declared fused op, through its declaration alone: the Triton launcher against the
float64 reference on the op's edge-shape examples (outputs poisoned before launch), the
torch.library registration (schema, fake tensors), and the AOT list covering what the launcher
picks. A toy op declared here shows a new op reaches the registry, the AOT list and the FLOP
report without being listed anywhere else.

Tolerance: the kernels accumulate in float32 in another order than the reference, so their error
against float64 is held to 8 × the float32 reference's own error on the same inputs, with a floor
of 1e-5 relative for inputs where float32 happens to be nearly exact.
"""
import pytest
import torch

from ferfuse.kernels import registry
from ferfuse.kernels.compat import triton_runs_on
from helpers import assert_close, rel_error

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
OPS = registry.ops()
CASES = [(op, case) for op in OPS for case in op.examples(torch.Generator().manual_seed(0))]


def _ids(item):
    op, (name, _) = item
    return f"{op.name}-{name}"


def _to(args, device=None, dtype=None):
    def move(t):
        if not isinstance(t, torch.Tensor):
            return t
        if dtype is not None and t.is_floating_point():
            # float64 keeps the strides (channels_last, slices) so the reference sees the same layout
            return t.to(dtype)
        return t.to(device)
    return tuple(move(a) for a in args)


def _tensors(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.skipif(not triton_runs_on(DEVICE), reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("item", CASES, ids=[_ids(c) for c in CASES])
def test_triton_matches_float64(item, poisoned_empty):
    op, (name, args) = item
    expected = _tensors(op.reference(*_to(args, dtype=torch.float64)))
    fp32 = _tensors(op.reference(*args))
    got = _tensors(op.triton(*_to(args, DEVICE)))
    assert len(got) == len(expected)
    for i, (g, e, f) in enumerate(zip(got, expected, fp32)):
        rtol = max(8 * rel_error(f.double(), e), 1e-5)
        assert_close(g.cpu(), e, rtol, f"{op.name} {name} output {i}")


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_registered_op_schema_and_fake_tensors(op):
    name, args = op.examples(torch.Generator().manual_seed(1))[0]
    torch.library.opcheck(op.op, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_aot_list_covers_what_the_launcher_picks(op):
    """On the examples' shapes (as meta tensors: GPU block sizes) the launcher picks only
    configurations that the AOT list, derived from the op's domain, compiles."""
    listed = {c.key() for c in op.configurations()}
    assert listed
    for name, args in op.examples(torch.Generator().manual_seed(2)):
        meta = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
        for tf32 in (False, True):
            for launch in op.planned_launches(*meta, allow_tf32=tf32):
                assert launch.key() in listed, f"{op.name} {name}: {launch.kernel} {launch.constexprs} not in AOT"


# -- a toy op declared through the declaration alone ------------------------------------------------
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch import Tensor  # noqa: E402


@triton.jit
def _toy_scale_kernel(x_ptr, y_ptr, n, scale, BLOCK: tl.constexpr):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + r, tl.load(x_ptr + r, mask=r < n) * scale, mask=r < n)


def _toy_triton(x: Tensor, scale: float, allow_tf32: bool = False) -> Tensor:
    y = torch.empty_like(x)
    registry.launch(_toy_scale_kernel, (triton.cdiv(x.numel(), 128),), x, y, x.numel(), scale, BLOCK=128)
    return y


@pytest.fixture
def toy_op():
    op = registry.OPS.get("toy_scale") or registry.declare(
        "toy_scale", triton=_toy_triton, reference=lambda x, scale: x * scale,
        flops=lambda x, scale: x[0] * x[1], examples=lambda gen: [("one", (torch.randn(3, 5, generator=gen), 2.0))],
        domain=lambda: [((torch.empty(4, 4, device="meta"), 1.5), False)])
    yield op
    registry.OPS.pop("toy_scale")


def test_a_new_op_reaches_registry_aot_and_flops(toy_op):
    from ferfuse.kernels.aot import configurations, kernel_name

    assert toy_op in registry.ops()
    assert "toy_scale" in {kernel_name(c) for c in configurations()}
    from ferfuse.bench import flops

    class Scale(torch.nn.Module):
        def forward(self, x):
            return toy_op(x, 3.0, backend="torch")

    assert flops.count(Scale(), (torch.randn(6, 7),))["flops"] == 42
