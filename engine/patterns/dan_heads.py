"""DAN-style attention heads and their fusion, found by structure.

A model matches when it has a `features` trunk, one or more head children each holding exactly
`sa` (the multi-scale spatial unit of spatial_unit.py) and `ca` (`gap` and `attention` = Linear,
BatchNorm1d, ReLU, Linear, Sigmoid), a `fc` Linear, and optionally a `bn` BatchNorm1d on the
logits. Class names do not matter, so the upstream code's own DAN is matched too. Its forward
    x = features(input); heads = log_softmax_k(stack(head_k(x))) if K > 1; bn(fc(Σ_k heads))
is computed as two fused steps: the K spatial maps (kernels/spatial_attention.py), and one pass
of pooling, channel attention, head fusion and classifier (kernels/head_fusion.py).
"""
import torch
import torch.nn as nn

from ...kernels.head_fusion import BLOCK_C_MAX, MAX_HEADS, dan_head_fusion
from ..fused import FusedUnit, original_forward
from . import Skip, find_networks, is_claimed, qualified
from .spatial_unit import (BRANCHES, classifier_reason, fold_classifier, fold_se_mlps, fold_spatial_units,
                           se_mlp_reason, spatial_maps, spatial_unit_reason)


def head_reason(head: nn.Module) -> str | None:
    """Why `head` is not a DAN cross-attention head (None when it is)."""
    sa, ca = getattr(head, "sa", None), getattr(head, "ca", None)
    if sa is None or ca is None:
        return "no `sa` and `ca` children"
    # exactly DAN's children: anything more (a gate, a fusion conv) is another head's structure
    extra = {n for n, _ in head.named_children()} - {"sa", "ca"}
    extra |= {f"sa.{n}" for n, _ in sa.named_children()} - {f"sa.{n}" for n in (*BRANCHES, "relu")}
    extra |= {f"ca.{n}" for n, _ in ca.named_children()} - {"ca.gap", "ca.attention"}
    if extra:
        return f"children beyond DAN's head: {', '.join(sorted(extra))}"
    return spatial_unit_reason(sa) or se_mlp_reason(getattr(ca, "attention", None),
                                                    sa.conv1x1[0].in_channels, "ca.attention")


class FusedDANHeads(FusedUnit):
    """K heads + log-softmax fusion + fc (+ bn) as spatial_attention_map + head_fusion."""

    pattern = "dan_heads"
    gated = False  # the maps are the ReLU'd multi-scale sums (MACA-Net: a sigmoid gate over them)

    def __init__(self, heads: dict[str, nn.Module], fc, bn, owner: str = "", **kw):
        covered = {**heads, qualified(owner, "fc"): fc, **({qualified(owner, "bn"): bn} if bn is not None else {})}
        super().__init__(covered, **kw)
        self.owner = owner  # the network's name in the model optimised ("" for the model itself)
        self.heads = list(heads.values())
        self.num_heads = len(self.heads)
        self.fc, self.bn = fc, bn
        self.channels = self.heads[0].sa.conv1x1[0].in_channels

    def fold(self, device):
        return {**fold_spatial_units([h.sa for h in self.heads], device, self.dtype, self.backend),
                **fold_se_mlps([h.ca.attention for h in self.heads], device),
                **fold_classifier(self.fc, self.bn, device)}

    def maps(self, x, gated: bool = False):
        """Check the trunk map, fetch the folded weights, compute the K maps: (f, x in the compute
        dtype, maps B×K×H×W float32)."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"the attention heads expect a B×{self.channels}×H×W feature map, "
                             f"got shape {tuple(x.shape)}")
        f = self.folded(x.device)
        xc = x.to(self.dtype)
        gate = (f["gate_w"], f["gate_b"]) if gated else ()
        return f, xc, spatial_maps(self, f, xc, *gate)

    def attention_maps(self, model, images):
        """Each head's spatial map for `images` (B×K×H×W), as the fused path computes it."""
        return self.maps(model.features(images), gated=self.gated)[2]

    def forward(self, x):
        """x: the trunk's B×C×H×W map. Returns (logits, heads) in x's dtype."""
        f, xc, maps = self.maps(x)
        logits, heads = self.call(dan_head_fusion, xc, maps, f["a1"], f["c1"], f["a2"], f["c2"], f["wfc"], f["bfc"],
                                  self.num_heads > 1)
        return logits.to(x.dtype), heads.to(x.dtype)

    def reference(self, modules, x):
        """The original computation with `modules` (in `covered` order): logits only."""
        k = self.num_heads
        heads = torch.stack([m(x) for m in modules[:k]], dim=1)
        if k > 1:
            heads = torch.log_softmax(heads, dim=1)
        out = modules[k](heads.sum(dim=1))
        return modules[k + 1](out) if self.bn is not None else out

    def run(self, model, x):
        """DAN's forward: (logits, features, heads); autograd through the input takes the original."""
        if torch.is_grad_enabled() and x.requires_grad:
            return original_forward(model, x)
        features = model.features(x)
        logits, heads = self.forward(features)
        return logits, features, heads

    def install(self, model):
        network = model.get_submodule(self.owner)
        self.install_forward(network, f"{network._get_name()}[ferfuse]")
        for head in self.heads:
            self.rebind(head, None, f"{head._get_name()}[fused: {self.pattern}]")  # display only


def find_heads(model, claimed, pattern, reason_fn, prefix: str = ""):
    """The model's head children by `reason_fn`, named from the root `prefix` is the model's name
    in: (heads, skips). Heads fuse together or not at all."""
    candidates = [(name, m) for n, m in model.named_children()
                  if (hasattr(m, "sa") or hasattr(m, "ca")) and not is_claimed(name := qualified(prefix, n), claimed)]
    heads, skips = {}, []
    for name, head in candidates:
        reason = reason_fn(head)
        if reason:
            skips.append(Skip(pattern, name, reason))
        else:
            heads[name] = head
    if skips:
        skips += [Skip(pattern, n, "a sibling head could not be fused; heads fuse together or not at all")
                  for n in heads]
        return {}, skips
    return heads, []


def model_reason(model, heads: dict, channels: int) -> str | None:
    if not isinstance(getattr(model, "features", None), nn.Module):
        return "the model has no `features` trunk to feed the heads"
    declared = getattr(model, "num_head", len(heads))
    if declared != len(heads):
        return f"num_head is {declared} but {len(heads)} heads were found"
    return classifier_reason(model, channels)


class DANHeadsPattern:
    name = "dan_heads"
    unit_class = FusedDANHeads
    head_reason = staticmethod(head_reason)

    def applies(self, model: nn.Module) -> bool:
        return True

    def find(self, model: nn.Module, claimed: set[str], **kw):
        return find_networks(model, claimed, self.find_in, **kw)

    def find_in(self, model: nn.Module, prefix: str, claimed: set[str], **kw):
        """The heads of `model` (named `prefix` in the model optimised), if it is a DAN-shaped network."""
        if not self.applies(model):
            return []
        heads, skips = find_heads(model, claimed, self.name, self.head_reason, prefix)
        if not heads:
            return skips
        channels = next(iter(heads.values())).sa.conv1x1[0].in_channels
        reason = model_reason(model, heads, channels)
        if not reason and kw.get("backend") == "triton" and (channels > BLOCK_C_MAX or len(heads) > MAX_HEADS):
            reason = (f"{channels} channels and {len(heads)} heads: the Triton head fusion keeps a sample's "
                      f"channels in registers, at most {BLOCK_C_MAX} channels and {MAX_HEADS} heads")
        if reason:
            return [Skip(self.name, ", ".join(heads), reason)]
        return [self.unit_class(heads, model.fc, getattr(model, "bn", None), owner=prefix, **kw)]
