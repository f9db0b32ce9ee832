"""The multi-scale spatial unit that DAN's and MACA-Net's heads share: 1×1 reduce (+BN), then
3×3 + 1×3 + 3×1 convs (+BN) summed and ReLU'd, reduced to one map per head, by a channel sum
(DAN) or a gate σ(Σ_o g_o·z_o + c) (MACA-Net). Matching, folding and the map computation on
each backend live here once; the head patterns add what follows the map."""
import torch
import torch.nn as nn

from ...kernels.spatial_attention import spatial_attention_map
from ..algebra import fold_batchnorm, layer_bias, merge_asymmetric_kernels
from ..executors import ConvRunner

BRANCHES = {"conv1x1": ((1, 1), (0, 0)), "conv_3x3": ((3, 3), (1, 1)),
            "conv_1x3": ((1, 3), (0, 1)), "conv_3x1": ((3, 1), (1, 0))}


def conv_bn_reason(seq, name, kernel, padding) -> str | None:
    if not (isinstance(seq, nn.Sequential) and len(seq) == 2 and isinstance(seq[0], nn.Conv2d)
            and type(seq[1]) is nn.BatchNorm2d):
        return f"{name} is not Sequential(Conv2d, BatchNorm2d)"
    conv, bn = seq
    if conv.kernel_size != kernel or conv.padding != padding or conv.stride != (1, 1) \
            or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
        return (f"{name} is a {conv.kernel_size} conv with padding {conv.padding}, stride {conv.stride}, "
                f"dilation {conv.dilation}, groups {conv.groups}; expected {kernel} with padding {padding}, "
                f"stride 1, dilation 1, groups 1, zero padding")
    if bn.num_features != conv.out_channels or bn.running_mean is None:
        return f"{name}'s BatchNorm2d does not match its conv or keeps no running statistics"
    return None


def spatial_unit_reason(sa: nn.Module, prefix: str = "sa") -> str | None:
    """Why `sa` is not the multi-scale spatial unit (None when it is)."""
    for name, (kernel, padding) in BRANCHES.items():
        reason = conv_bn_reason(getattr(sa, name, None), f"{prefix}.{name}", kernel, padding)
        if reason:
            return reason
    c_in, reduced = sa.conv1x1[0].in_channels, sa.conv1x1[0].out_channels
    for name in ("conv_3x3", "conv_1x3", "conv_3x1"):
        conv = getattr(sa, name)[0]
        if conv.in_channels != reduced or conv.out_channels != c_in:
            return f"{prefix}.{name} maps {conv.in_channels}->{conv.out_channels}, expected {reduced}->{c_in}"
    if type(getattr(sa, "relu", None)) is not nn.ReLU:
        return f"{prefix}.relu is not a ReLU"
    return None


def se_mlp_reason(att, channels: int, name: str) -> str | None:
    """`att` must be Sequential(Linear, BatchNorm1d, ReLU, Linear, Sigmoid) from and to `channels`."""
    kinds = (nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.Sigmoid)
    if not (isinstance(att, nn.Sequential) and len(att) == 5 and all(type(m) is k for m, k in zip(att, kinds))):
        return f"{name} is not Sequential(Linear, BatchNorm1d, ReLU, Linear, Sigmoid)"
    if att[0].in_features != channels or att[3].out_features != channels or att[1].running_mean is None:
        return f"{name} does not map {channels} channels back to {channels}"
    return None


def fold_spatial_units(sas, device, dtype, backend: str) -> dict:
    """K spatial units → one 1×1 (K·R×C) and K merged 3×3 kernels (K×O×R×3×3), BN folded:
    `w1`, `b1`, `w3`, `b3` for the fused op; on the CPU torch backend also `runners`, the same
    weights as two folded convs (one 1×1, one grouped 3×3 + ReLU) for the oneDNN executors
    (None elsewhere)."""
    w1, b1, w3, b3 = [], [], [], []
    for sa in sas:
        w, b = fold_batchnorm(sa.conv1x1[0].weight, sa.conv1x1[0].bias, sa.conv1x1[1])
        w1.append(w.flatten(1))
        b1.append(b)
        branches = [fold_batchnorm(getattr(sa, n)[0].weight, getattr(sa, n)[0].bias, getattr(sa, n)[1])
                    for n in ("conv_3x3", "conv_1x3", "conv_3x1")]
        w, b = merge_asymmetric_kernels(*branches[0], *branches[1], *branches[2])
        w3.append(w)
        b3.append(b)
    w1, b1, w3, b3 = torch.cat(w1), torch.cat(b1), torch.stack(w3), torch.stack(b3)
    K, O, R = w3.shape[:3]
    f32 = torch.float32
    runners = None  # only the CPU torch backend runs the oneDNN executors
    if backend == "torch" and device.type == "cpu" and dtype == f32:
        runners = (ConvRunner(w1.view(K * R, -1, 1, 1).to(device, f32), b1.to(device, f32)),
                               ConvRunner(w3.reshape(K * O, R, 3, 3).to(device, f32), b3.view(-1).to(device, f32),
                                          padding=(1, 1), groups=K))
    w3 = spatial_attention_map.pack(backend, "w3", w3)
    return {"w1": w1.to(device, dtype), "b1": b1.to(device, f32), "w3": w3.to(device, dtype), "b3": b3.to(device, f32),
            "runners": runners}


def spatial_maps(unit, f: dict, x: torch.Tensor, gate_w=None, gate_b=None) -> torch.Tensor:
    """The K float32 maps (B×K×H×W) on the unit's backend; `f` from fold_spatial_units."""
    executor = unit.conv_executor()
    if executor != "aten" and f["runners"] is not None:  # oneDNN executors (CPU): spatial_attention_map_reference's math
        B, _, H, W = x.shape
        conv1x1, conv3x3 = f["runners"]
        z = conv3x3.run(conv1x1.run(x, executor=executor), act="relu", executor=executor).view(
            B, unit.num_heads, -1, H, W)
        if gate_w is None:
            return z.sum(2, dtype=torch.float32)
        return torch.sigmoid(torch.einsum("bkohw,ko->bkhw", z, gate_w) + gate_b.view(1, -1, 1, 1))
    return unit.call(spatial_attention_map, x, f["w1"], f["b1"], f["w3"], f["b3"], gate_w, gate_b)


def fold_se_mlps(atts, device) -> dict:
    """K squeeze-excite MLPs (Linear, BN1d, ReLU, Linear, Sigmoid) → stacked float32 weights with
    the BN folded into the first Linear: a1 K×J×C, c1 K×J, a2 K×C×J, c2 K×C."""
    a1, c1, a2, c2 = [], [], [], []
    for att in atts:
        w, b = fold_batchnorm(att[0].weight, att[0].bias, att[1])
        a1.append(w)
        c1.append(b)
        a2.append(att[3].weight.double())
        c2.append(layer_bias(att[3]))
    return {k: torch.stack(v).to(device, torch.float32) for k, v in (("a1", a1), ("c1", c1), ("a2", a2), ("c2", c2))}


def fold_classifier(fc: nn.Linear, bn, device) -> dict:
    """fc with the logits' BatchNorm1d folded in (when there is one), float32."""
    w, b = fc.weight.double(), layer_bias(fc)
    if bn is not None:
        w, b = fold_batchnorm(w, b, bn)
    return {"wfc": w.to(device, torch.float32), "bfc": b.to(device, torch.float32)}


def classifier_reason(model: nn.Module, channels: int) -> str | None:
    fc, bn = getattr(model, "fc", None), getattr(model, "bn", None)
    if not isinstance(fc, nn.Linear) or fc.in_features != channels:
        return f"no `fc` Linear({channels}, classes) after the heads"
    if bn is not None and not (type(bn) is nn.BatchNorm1d and bn.num_features == fc.out_features
                               and bn.running_mean is not None):
        return f"`bn` is not a BatchNorm1d({fc.out_features}) with running statistics"
    return None
