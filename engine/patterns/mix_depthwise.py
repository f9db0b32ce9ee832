"""Mobile blocks with mixed depthwise convolution and coordinate attention: MHAN's trunk
(MixedFeatureNet's Mix_Depth_Wise), found by structure: a block with
- `conv`: a 1×1 expand conv + BatchNorm2d + PReLU (`conv`, `bn`, `prelu`),
- `conv_dw`: `mixed_depthwise_conv`, depthwise convs of odd square kernels over consecutive
  channel groups (`split_channels`), padding k/2, one stride,
- `CA`: coordinate attention (`conv1` + `bn1` + h-swish `relu`, `conv2`, `conv3`),
- `project`: a 1×1 conv + BatchNorm2d, and `residual` (x + block(x)).

Folded (eval mode): both BatchNorms into their convs, CA's bn1 into conv1, the mixed conv into
one depthwise conv (engine/depthwise.py). On the oneDNN executors the block is four calls: the
expand conv, one C pass for PReLU + mixed depthwise conv, one for coordinate attention, the
project conv with the residual add in its epilogue; the 1×1 convs on oneDNN, or on the winograd
executor on ferfuse's GEMM (engine/pointwise.py) where their first call timed it faster. On aten
(and CUDA, and export) the same folded weights run as torch ops.
"""
import torch
import torch.nn as nn

from ..algebra import fold_batchnorm, layer_bias
from ..depthwise import CoordinateAttention, MixedDepthwise, hard_swish
from .conv_bn import foldable_reason, folded_conv
from . import find_modules
from .mobile_block import MobileBlockUnit, is_one_by_one, is_same_depthwise

PARTS = ("conv", "conv_dw", "CA", "project")


def _acts_as_hard_swish(act) -> bool:
    """CA's activation, checked by what it computes (any module name): x·relu6(x+3)/6."""
    if not isinstance(act, nn.Module) or any(True for _ in act.parameters()):
        return False
    probe = torch.linspace(-8, 8, 161, dtype=torch.float64)
    try:
        with torch.no_grad():
            return torch.allclose(act(probe.clone()), hard_swish(probe), rtol=1e-12, atol=1e-12)
    except Exception:  # noqa: BLE001 - an activation that cannot take a float64 vector is not h-swish
        return False


def block_reason(block: nn.Module) -> str | None:
    expand, mixed, ca, project = (getattr(block, n) for n in PARTS)
    for part, names in ((expand, ("conv", "bn", "prelu")), (project, ("conv", "bn"))):
        if not all(isinstance(getattr(part, n, None), nn.Module) for n in names):
            return f"{'conv' if part is expand else 'project'} is not a block of {', '.join(names)}"
        reason = foldable_reason(part.conv, part.bn)
        if reason:
            return reason
    c_in, groups = expand.conv.in_channels, expand.conv.out_channels
    if not is_one_by_one(expand.conv, c_in):
        return "conv.conv is not a 1×1 convolution"
    if type(expand.prelu) is not nn.PReLU or expand.prelu.num_parameters not in (1, groups):
        return f"conv.prelu is not a PReLU over {groups} channels"
    convs = getattr(mixed, "mixed_depthwise_conv", None)
    split = list(getattr(mixed, "split_channels", []))
    if not isinstance(convs, nn.ModuleList) or len(convs) == 0 or len(split) != len(convs) or sum(split) != groups:
        return f"conv_dw has no mixed_depthwise_conv over split_channels summing to {groups}"
    stride = convs[0].stride if isinstance(convs[0], nn.Conv2d) else None
    if not all(is_same_depthwise(conv) and conv.in_channels == c and conv.stride == stride
               for conv, c in zip(convs, split)):
        return "conv_dw's convs are not depthwise, odd, square, same-padded, of one stride"
    mip = getattr(getattr(ca, "conv1", None), "out_channels", None)
    if not (is_one_by_one(getattr(ca, "conv1", None), groups) and type(getattr(ca, "bn1", None)) is nn.BatchNorm2d
            and ca.bn1.num_features == mip and ca.bn1.running_mean is not None
            and all(is_one_by_one(getattr(ca, n, None), mip, groups) for n in ("conv2", "conv3"))):
        return "CA is not coordinate attention (1×1 conv1 + bn1, conv2, conv3)"
    if not _acts_as_hard_swish(getattr(ca, "relu", None)):
        return "CA.relu does not compute h-swish"
    if not is_one_by_one(project.conv, groups):
        return "project.conv is not a 1×1 convolution"
    residual = getattr(block, "residual", None)
    if not isinstance(residual, bool):
        return "no boolean `residual`"
    if residual and (project.conv.out_channels != c_in or stride != (1, 1)):
        return "a residual block that changes shape"
    return None


class FusedMixDepthwise(MobileBlockUnit):
    pattern = "mix_depthwise"

    def fold(self, device):
        blk, ca, dt = self.block, self.block.CA, self.dtype
        groups = blk.conv.conv.out_channels
        convs = blk.conv_dw.mixed_depthwise_conv
        bias = None if all(c.bias is None for c in convs) else torch.cat([layer_bias(c) for c in convs]).to(device, dt)
        mixed = MixedDepthwise([c.weight.detach().to(device, dt) for c in convs], bias, convs[0].stride[0],
                               blk.conv.prelu.weight.detach().expand(groups).to(device, dt))
        w1, b1 = fold_batchnorm(ca.conv1.weight, ca.conv1.bias, ca.bn1)
        gate = CoordinateAttention(*(t.detach().to(device, dt) for t in (  # a view of a parameter keeps its grad
            w1.flatten(1), b1, ca.conv2.weight.flatten(1), layer_bias(ca.conv2),
            ca.conv3.weight.flatten(1), layer_bias(ca.conv3))))
        return {"expand": folded_conv(blk.conv.conv, blk.conv.bn, device, dt), "mixed": mixed, "gate": gate,
                "project": folded_conv(blk.project.conv, blk.project.bn, device, dt)}

    def forward(self, x):
        f = self.folded(x.device)
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        residual = x if self.block.residual else None
        if not self.runs_c():
            u = f["expand"].run(x, executor="aten")
            y = f["gate"].run_torch(f["mixed"].run_torch(u))
            return f["project"].run(y, residual=residual, executor="aten")
        executor = self.conv_executor()  # onednn, or winograd: each 1×1 conv on its timed GEMM
        # u and y die in this call: ferfuse's C forms write them into this thread's scratch maps
        u = f["expand"].run(x, executor=executor, scratch_slot=0)  # ours: the C pass applies the PReLU in place
        y = f["gate"].run_c(f["mixed"].run_c(u, scratch_slot=1))
        return f["project"].run(y, residual=residual, executor=executor)


class MixDepthwisePattern:
    name = "mix_depthwise"

    def find(self, model: nn.Module, claimed: set[str], **kw):
        def candidate(m):
            return all(isinstance(getattr(m, n, None), nn.Module) for n in PARTS)

        return find_modules(self.name, model, claimed, candidate, block_reason, FusedMixDepthwise, **kw)
