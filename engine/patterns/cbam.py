"""CBAM (channel attention, then spatial attention), found by structure: a module with `mlp` =
Sequential(Conv2d(C, C/r, 1), ReLU, Conv2d(C/r, C, 1)) and `spatial` = Conv2d(2, 1, k) (same
padding, stride 1). Runs as the `cbam` fused op (kernels/cbam.py): the channel MLP on the average
and max pools, the channel statistics of x ⊙ ca and the spatial gate, without forming x ⊙ ca.
On the oneDNN executors (fp32 CPU) it is one C pass instead (engine/depthwise.py CBAMGate): the
op's torch form is ~15 small ops, 1.1-1.3 ms on HAFEM's 2048×7×7 map at batch 1 on the 2-core AVX2
EPYC, where ONNX Runtime took 0.36."""
import torch
import torch.nn as nn

from ...kernels.cbam import cbam
from ..algebra import layer_bias
from ..depthwise import LIBRARY, CBAMGate
from ..executors import ONEDNN_EXECUTORS
from ..fused import FusedUnit
from . import Skip, is_claimed


def cbam_reason(m: nn.Module) -> str | None:
    mlp, spatial = getattr(m, "mlp", None), getattr(m, "spatial", None)
    kinds = (nn.Conv2d, nn.ReLU, nn.Conv2d)
    if not (isinstance(mlp, nn.Sequential) and len(mlp) == 3 and all(type(a) is k for a, k in zip(mlp, kinds))):
        return "mlp is not Sequential(Conv2d, ReLU, Conv2d)"
    c = mlp[0].in_channels
    if mlp[0].kernel_size != (1, 1) or mlp[2].kernel_size != (1, 1) or mlp[2].out_channels != c \
            or mlp[0].groups != 1 or mlp[2].groups != 1:
        return "mlp is not a 1×1 bottleneck back to its input channels"
    if not (isinstance(spatial, nn.Conv2d) and spatial.in_channels == 2 and spatial.out_channels == 1
            and spatial.kernel_size[0] == spatial.kernel_size[1] and spatial.kernel_size[0] % 2 == 1
            and spatial.stride == (1, 1) and spatial.dilation == (1, 1) and spatial.padding_mode == "zeros"
            and spatial.padding == (spatial.kernel_size[0] // 2,) * 2):
        return "spatial is not a same-padded Conv2d(2, 1, k) with odd square k, stride 1, no dilation"
    return None


class FusedCBAM(FusedUnit):
    pattern = "cbam"

    def __init__(self, name, module, **kw):
        super().__init__({name: module}, **kw)
        self.module = module

    def fold(self, device):
        mlp, spatial = self.module.mlp, self.module.spatial
        f32 = torch.float32
        w1, w2 = mlp[0].weight.flatten(1), mlp[2].weight.flatten(1)
        out = {"w1": w1[None].to(device, f32), "b1": layer_bias(mlp[0])[None].to(device, f32),
               "w2": w2[None].to(device, f32), "b2": layer_bias(mlp[2])[None].to(device, f32),
               "spatial_w": spatial.weight.to(device, f32),
               "spatial_b": None if spatial.bias is None else spatial.bias.to(device, f32)}
        if device.type == "cpu":
            out["gate"] = CBAMGate(out["w1"][0], out["b1"][0], out["w2"][0], out["b2"][0], out["spatial_w"],
                                   out["spatial_b"])
        return out

    def forward(self, x):
        f = self.folded(x.device)
        x = x.to(self.dtype)
        if "gate" in f and x.dtype == torch.float32 and self.conv_executor() != "aten" \
                and LIBRARY.unavailable_reason() is None:
            return f["gate"].run_c(x)
        return self.call(cbam, x, f["w1"], f["b1"], f["w2"], f["b2"], f["spatial_w"], f["spatial_b"])

    def notes(self, executors):
        reason = LIBRARY.unavailable_reason() if set(executors) & set(ONEDNN_EXECUTORS) else None
        return [f"the CBAM C pass is unavailable ({reason}): CBAM runs as the cbam op's torch form"] if reason else []

    def reference(self, modules, x):
        return modules[0](x)

    def install(self, model):
        self.install_forward(self.module, f"{self.module._get_name()}[fused: cbam]")


class CBAMPattern:
    name = "cbam"

    def find(self, model: nn.Module, claimed: set[str], **kw):
        found = []
        for name, m in model.named_modules():
            if not (hasattr(m, "mlp") and hasattr(m, "spatial")) or is_claimed(name, claimed):
                continue
            reason = cbam_reason(m)
            found.append(Skip(self.name, name, reason) if reason else FusedCBAM(name, m, **kw))
        return found
