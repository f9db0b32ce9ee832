"""CBAM (channel attention, then spatial attention), found by structure: a module with `mlp` =
Sequential(Conv2d(C, C/r, 1), ReLU, Conv2d(C/r, C, 1)) and `spatial` = Conv2d(2, 1, k). As few
passes over x as the algebra allows (eval mode):
    ca  = σ(MLP(avg) + MLP(max))   the two MLP evaluations batched as one GEMM pair
    sa  = σ(conv_k([mean_c(x ⊙ ca), max_c(x ⊙ ca)]))
          mean_c(x ⊙ ca) = (ca/C)ᵀ·x, a matrix-vector product per sample, no x ⊙ ca needed for it
    out = x ⊙ ca ⊗ sa              one product with the rank-1 scale ca ⊗ sa
Torch ops on both backends (no Triton kernel for CBAM yet: the report says so)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

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
            and spatial.stride == (1, 1) and spatial.padding == (spatial.kernel_size[0] // 2, spatial.kernel_size[1] // 2)):
        return "spatial is not a same-padded Conv2d(2, 1, k)"
    return None


class FusedCBAM(FusedUnit):
    pattern = "cbam"
    torch_only = True

    def __init__(self, name, module, **kw):
        super().__init__({name: module}, **kw)
        self.module = module

    def fold(self, device):
        mlp = self.module.mlp
        f32 = torch.float32
        out = {"w1": mlp[0].weight.flatten(1).to(device, f32), "w2": mlp[2].weight.flatten(1).to(device, f32),
               "b1": mlp[0].bias, "b2": mlp[2].bias}
        return {k: (v.to(device, f32) if v is not None else None) for k, v in out.items()}

    def forward(self, x):
        f = self.folded(x.device)
        B, C, H, W = x.shape
        xf = x.reshape(B, C, H * W)
        pooled = torch.cat([xf.mean(2), xf.amax(2)], dim=0)               # 2B×C: avg and max, one GEMM pair
        hidden = torch.relu(F.linear(pooled, f["w1"], f["b1"]))
        both = F.linear(hidden, f["w2"], f["b2"])
        ca = torch.sigmoid(both[:B] + both[B:])                            # B×C
        mean_c = torch.bmm((ca / C).unsqueeze(1), xf).view(B, 1, H, W)     # mean over channels of x ⊙ ca
        max_c = (x * ca[:, :, None, None]).amax(dim=1, keepdim=True)
        sa = torch.sigmoid(self.module.spatial(torch.cat([mean_c, max_c], dim=1)))
        return x * (ca[:, :, None, None] * sa)

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
