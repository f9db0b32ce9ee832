"""MACA-Net cross-attention heads, found by structure: each head holds `sa` (the multi-scale
spatial unit plus `gate` = Sequential(Conv2d(C, 1, 1), Sigmoid)), `ca` (`attention` MLP over
GAP + GMP) and `fuse` (Conv2d(2C, C, 1)); the model holds `features`, the heads, `fc` and an
optional `bn`. Per head, exactly (eval mode, by linearity of the 1×1 fusion and of GAP):
    g      = σ(Σ_o w_g[o]·ReLU(z)[o] + c_g)                 the gate map, B×H×W
    v_sa   = (1/HW) Σ_p g[p]·x[:, p]                        GAP(x ⊙ g), x ⊙ g never formed
    y      = σ(MLP(GAP(x) + GMP(x)));  v_ca = y ⊙ GAP(x)    GAP(x ⊙ y)
    head   = W_a·v_sa + W_b·v_ca + b                        GAP(Conv1x1([x⊙g, x⊙y])): two GEMMs, no concat
then log_softmax over heads, sum, fc with the folded bn. Three fused ops: the gate maps (the
spatial-map op's gate epilogue), the channel gates (squeeze_excite, pool="avg+max") and the
fusion on pooled vectors (maca_fusion).
"""
import torch
import torch.nn as nn

from ...kernels.maca_fusion import maca_fusion
from ...kernels.squeeze_excite import squeeze_excite
from ..algebra import layer_bias
from .dan_heads import DANHeadsPattern, FusedDANHeads
from .spatial_unit import se_mlp_reason, spatial_unit_reason


def head_reason(head: nn.Module) -> str | None:
    sa, ca, fuse = getattr(head, "sa", None), getattr(head, "ca", None), getattr(head, "fuse", None)
    if sa is None or ca is None or fuse is None:
        return "no `sa`, `ca` and `fuse` children"
    reason = spatial_unit_reason(sa)
    if reason:
        return reason
    c = sa.conv1x1[0].in_channels
    gate = getattr(sa, "gate", None)
    if not (isinstance(gate, nn.Sequential) and len(gate) == 2 and isinstance(gate[0], nn.Conv2d)
            and type(gate[1]) is nn.Sigmoid and gate[0].kernel_size == (1, 1) and gate[0].out_channels == 1
            and gate[0].in_channels == c and gate[0].groups == 1):
        return "sa.gate is not Sequential(Conv2d(C, 1, 1), Sigmoid)"
    if not (isinstance(fuse, nn.Conv2d) and fuse.kernel_size == (1, 1) and fuse.in_channels == 2 * c
            and fuse.out_channels == c and fuse.groups == 1 and fuse.stride == (1, 1) and fuse.padding == (0, 0)):
        return f"fuse is not a Conv2d({2 * c}, {c}, 1)"
    return se_mlp_reason(getattr(ca, "attention", None), c, "ca.attention")


class FusedMACAHeads(FusedDANHeads):
    """DAN's unit with the gate and the in-head fusion conv: same coverage, reference and install."""

    pattern = "maca_heads"
    gated = True

    def fold(self, device):
        c, f32 = self.channels, torch.float32
        fuse_w = torch.stack([h.fuse.weight.double().flatten(1) for h in self.heads])  # K×C×2C
        return {**super().fold(device),  # spatial units, SE MLPs and classifier as DAN's
                "gate_w": torch.stack([h.sa.gate[0].weight.double().flatten() for h in self.heads]).to(device, f32),
                "gate_b": torch.stack([layer_bias(h.sa.gate[0])[0] for h in self.heads]).to(device, f32),
                "wa": fuse_w[:, :, :c].to(device, f32), "wb": fuse_w[:, :, c:].to(device, f32),
                "bf": torch.stack([layer_bias(h.fuse) for h in self.heads]).to(device, f32)}

    def forward(self, x):
        f, xc, gates = self.maps(x, gated=self.gated)  # the K gate maps, B×K×H×W
        ca = self.call(squeeze_excite, xc, f["a1"], f["c1"], f["a2"], f["c2"], "avg+max")  # B×K×C
        logits, heads = self.call(maca_fusion, xc, gates, ca, f["wa"], f["wb"], f["bf"], f["wfc"], f["bfc"],
                                  self.num_heads > 1)
        return logits.to(x.dtype), heads.to(x.dtype)


class MACAHeadsPattern(DANHeadsPattern):
    name = "maca_heads"
    unit_class = FusedMACAHeads
    head_reason = staticmethod(head_reason)

    def applies(self, model: nn.Module) -> bool:
        # not MACA-structured: leave the candidates to the other head patterns
        return any(hasattr(m, "fuse") for _, m in model.named_children())
