"""DAN-style attention heads and their fusion, found by structure.

A model matches when it has a `features` trunk, one or more head children each holding `sa`
(conv1x1, conv_3x3, conv_1x3, conv_3x1: Sequential(Conv2d, BatchNorm2d) of those kernel shapes)
and `ca` (`attention` = Linear, BatchNorm1d, ReLU, Linear, Sigmoid), a `fc` Linear, and
optionally a `bn` BatchNorm1d on the logits. Class names do not matter, so the upstream code's
own DAN is matched too. Its forward is then
    x = features(input); heads = log_softmax_k(stack(head_k(x))) if K > 1; fc(Σ_k) -> bn
computed as three fused steps: the K spatial maps, and one pass of pooling, channel attention,
head fusion and classifier (kernels/spatial_attention.py, kernels/head_fusion.py).
"""
import torch
import torch.nn as nn

from ...kernels import ops
from ...kernels.compat import triton_runs_on
from ...kernels.head_fusion import head_fusion_reference, head_fusion_triton
from ...kernels.spatial_attention import spatial_attention_map_reference, spatial_attention_map_triton
from ..algebra import fold_batchnorm, layer_bias, merge_asymmetric_kernels
from ..executors import ConvRunner
from ..fused import FusedUnit, original_forward, unit_of
from . import Skip

_SA_BRANCHES = {"conv1x1": ((1, 1), (0, 0)), "conv_3x3": ((3, 3), (1, 1)),
                "conv_1x3": ((1, 3), (0, 1)), "conv_3x1": ((3, 1), (1, 0))}


def _conv_bn_reason(seq, name, kernel, padding) -> str | None:
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


def head_reason(head: nn.Module) -> str | None:
    """Why `head` is not a DAN cross-attention head (None when it is)."""
    sa, ca = getattr(head, "sa", None), getattr(head, "ca", None)
    if sa is None or ca is None:
        return "no `sa` and `ca` children"
    for name, (kernel, padding) in _SA_BRANCHES.items():
        reason = _conv_bn_reason(getattr(sa, name, None), f"sa.{name}", kernel, padding)
        if reason:
            return reason
    c_in, reduced = sa.conv1x1[0].in_channels, sa.conv1x1[0].out_channels
    for name in ("conv_3x3", "conv_1x3", "conv_3x1"):
        conv = getattr(sa, name)[0]
        if conv.in_channels != reduced or conv.out_channels != c_in:
            return f"sa.{name} maps {conv.in_channels}->{conv.out_channels}, expected {reduced}->{c_in}"
    att = getattr(ca, "attention", None)
    kinds = (nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.Sigmoid)
    if not (isinstance(att, nn.Sequential) and len(att) == 5
            and all(type(m) is k for m, k in zip(att, kinds))):
        return "ca.attention is not Sequential(Linear, BatchNorm1d, ReLU, Linear, Sigmoid)"
    if att[0].in_features != c_in or att[3].out_features != c_in or att[1].running_mean is None:
        return f"ca.attention does not map {c_in} channels back to {c_in}"
    return None


class FusedDANHeads(FusedUnit):
    """K heads + log-softmax fusion + fc (+ bn) as spatial_attention_map + head_fusion."""

    pattern = "dan_heads"

    def __init__(self, heads: dict[str, nn.Module], fc_name, fc, bn_name, bn, **kw):
        covered = dict(heads)
        covered[fc_name] = fc
        if bn is not None:
            covered[bn_name] = bn
        super().__init__(covered, **kw)
        self.heads = list(heads.values())
        self.fc, self.bn = fc, bn
        self.channels = self.heads[0].sa.conv1x1[0].in_channels

    def fold(self, device):
        w1, b1, w3, b3, a1, c1, a2, c2 = [], [], [], [], [], [], [], []
        for head in self.heads:
            sa, att = head.sa, head.ca.attention
            w, b = fold_batchnorm(sa.conv1x1[0].weight, sa.conv1x1[0].bias, sa.conv1x1[1])
            w1.append(w.flatten(1))
            b1.append(b)
            branches = [fold_batchnorm(getattr(sa, n)[0].weight, getattr(sa, n)[0].bias, getattr(sa, n)[1])
                        for n in ("conv_3x3", "conv_1x3", "conv_3x1")]
            w, b = merge_asymmetric_kernels(*branches[0], *branches[1], *branches[2])
            w3.append(w)
            b3.append(b)
            w, b = fold_batchnorm(att[0].weight, att[0].bias, att[1])
            a1.append(w)
            c1.append(b)
            a2.append(att[3].weight.double())
            c2.append(layer_bias(att[3]))
        wfc, bfc = self.fc.weight.double(), layer_bias(self.fc)
        if self.bn is not None:
            wfc, bfc = fold_batchnorm(wfc, bfc, self.bn)
        w3 = torch.stack(w3)  # K×O×R×3×3
        K, O, R = w3.shape[:3]
        f32 = torch.float32
        out = {
            "a1": torch.stack(a1).to(device, f32), "c1": torch.stack(c1).to(device, f32),
            "a2": torch.stack(a2).to(device, f32), "c2": torch.stack(c2).to(device, f32),
            "wfc": wfc.to(device, f32), "bfc": bfc.to(device, f32),
        }
        if self.conv_executor() == "onednn":
            # the spatial map as two prepacked oneDNN convs: one 1×1 for all heads, one grouped 3×3 + ReLU
            out["conv1x1"] = ConvRunner(torch.cat(w1).view(K * R, -1, 1, 1).to(device, f32),
                                        torch.cat(b1).to(device, f32), "onednn")
            out["conv3x3"] = ConvRunner(w3.reshape(K * O, R, 3, 3).to(device, f32),
                                        torch.stack(b3).view(-1).to(device, f32), "onednn", padding=(1, 1), groups=K)
            return out
        if self.backend == "triton":
            # tap-major storage (K×3×3×R×O) so a tile of output channels is one coalesced load
            w3 = w3.permute(0, 3, 4, 2, 1).contiguous().permute(0, 4, 3, 1, 2)
        out.update(w1=torch.cat(w1).to(device, self.dtype), b1=torch.cat(b1).to(device, f32),
                   w3=w3.to(device, self.dtype), b3=torch.stack(b3).to(device, f32))
        return out

    def forward(self, x):
        """x: the trunk's B×C×H×W map. Returns (logits, heads) in x's dtype."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"the attention heads expect a B×{self.channels}×H×W feature map, "
                             f"got shape {tuple(x.shape)}")
        f = self.folded(x.device)
        xc = x.to(self.dtype)
        log_softmax = len(self.heads) > 1  # DAN skips the log_softmax for a single head
        args = (f["a1"], f["c1"], f["a2"], f["c2"], f["wfc"], f["bfc"], log_softmax)
        if self.backend == "triton" and not triton_runs_on(x.device):
            raise RuntimeError(f"the triton backend cannot run on {x.device} tensors here "
                               "(CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)")
        if "conv1x1" in f:  # oneDNN executor (CPU): the same math as spatial_attention_map_reference
            B, _, H, W = x.shape
            z = f["conv3x3"].run(f["conv1x1"].run(xc), relu=True)
            maps = z.view(B, len(self.heads), -1, H, W).sum(2, dtype=torch.float32)
            logits, heads = ops.dan_head_fusion(xc, maps, *args)
        elif self.decomposed:
            maps = spatial_attention_map_reference(xc, f["w1"], f["b1"], f["w3"], f["b3"])
            logits, heads = head_fusion_reference(xc, maps, *args)
        elif self.backend == "triton" and x.device.type == "cpu":  # the interpreter: call launchers directly
            maps = spatial_attention_map_triton(xc, f["w1"], f["b1"], f["w3"], f["b3"], self.allow_tf32)
            logits, heads = head_fusion_triton(xc, maps, *args, allow_tf32=self.allow_tf32)
        else:  # torch.library ops: CPU runs the torch reference, CUDA the Triton kernels
            maps = ops.spatial_attention_map(xc, f["w1"], f["b1"], f["w3"], f["b3"], self.allow_tf32)
            logits, heads = ops.dan_head_fusion(xc, maps, *args, allow_tf32=self.allow_tf32)
        return logits.to(x.dtype), heads.to(x.dtype)

    def reference(self, modules, x):
        """The original computation with `modules` (same order as `covered`): logits only."""
        k = len(self.heads)
        heads = torch.stack([m(x) for m in modules[:k]], dim=1)
        if k > 1:
            heads = torch.log_softmax(heads, dim=1)
        out = modules[k](heads.sum(dim=1))
        return modules[k + 1](out) if self.bn is not None else out

    def install(self, model):
        self.rebind(model, _dan_forward, f"{model._get_name()}[ferfuse]")
        for head in self.heads:
            self.rebind(head, None, f"{head._get_name()}[fused: dan_heads]")  # display only


def _dan_forward(self, x):
    unit = unit_of(self)
    if not unit.active(self) or (torch.is_grad_enabled() and x.requires_grad):
        return original_forward(self, x)
    features = self.features(x)
    logits, heads = unit.forward(features)
    return logits, features, heads


class DANHeadsPattern:
    name = "dan_heads"

    def find(self, model: nn.Module, claimed: set[str], **kw):
        candidates = [(n, m) for n, m in model.named_children() if hasattr(m, "sa") or hasattr(m, "ca")]
        if not candidates:
            return []
        heads, skips = {}, []
        for name, head in candidates:
            reason = head_reason(head)
            if reason:
                skips.append(Skip(self.name, name, reason))
            else:
                heads[name] = head
        if skips:
            return skips + [Skip(self.name, n, "a sibling head could not be fused; heads fuse together or not at all")
                            for n in heads]
        fc, bn = getattr(model, "fc", None), getattr(model, "bn", None)
        channels = next(iter(heads.values())).sa.conv1x1[0].in_channels
        if not isinstance(getattr(model, "features", None), nn.Module):
            return [Skip(self.name, ", ".join(heads), "the model has no `features` trunk to feed the heads")]
        if not isinstance(fc, nn.Linear) or fc.in_features != channels:
            return [Skip(self.name, ", ".join(heads), f"no `fc` Linear({channels}, classes) after the heads")]
        if bn is not None and not (type(bn) is nn.BatchNorm1d and bn.num_features == fc.out_features
                                   and bn.running_mean is not None):
            return [Skip(self.name, "bn", f"`bn` is not a BatchNorm1d({fc.out_features}) with running statistics")]
        declared = getattr(model, "num_head", len(heads))
        if declared != len(heads):
            return [Skip(self.name, ", ".join(heads), f"num_head is {declared} but {len(heads)} heads were found")]
        return [FusedDANHeads(heads, "fc", fc, "bn", bn, **kw)]
