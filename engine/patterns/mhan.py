"""MHAN's attention and fusion, found by structure: `features`, `ela` (shared depthwise Conv1d,
GroupNorm, sigmoid), K heads each holding `SEDDAHead` (depthwise (1,W) and (H,1) Linear_blocks,
conv1 + bn1 + h_swish, conv2/conv3 + sigmoid, squeeze-excite `fc`), `Linear` (a depthwise H×W
conv + BN) and `fc`. Forward, as upstream: x = ela(features(input)); maps_k = head_k(x);
logits = fc(flatten(Linear(x · max_k maps_k))); returns (logits, x, [maps_k]).

Exact algebra (eval mode), as two fused ops:
- `ela` (kernels/ela.py): both directional means through the shared Conv1d and GroupNorm, sigmoid,
  one product x·a_h·a_w, one program per (sample, channel group).
- `mhan_heads` (kernels/mhan_heads.py), all K heads: the (1,W)/(H,1) depthwise convs with their BN
  folded are weighted sums along W and H; conv1 with bn1 folded; GAP(a_h ⊗ a_w) =
  mean_h(a_h)·mean_w(a_w), so the squeeze-excite never reads a 7×7 map; the maps a_h ⊗ a_w ⊗ s
  are formed once, for the return value and the max; the depthwise H×W conv over x·m with its BN
  folded is Σ_p k'[c,p]·x[c,p]·m[c,p] + b'[c]; then fc.
"""
import torch
import torch.nn as nn

from ...kernels.ela import ela as ela_op
from ...kernels.mhan_heads import NAMES as MHAN_HEADS_ARGS, mhan_heads
from ..algebra import fold_batchnorm, layer_bias
from ..fused import FusedUnit, original_forward
from . import Skip, find_networks, is_claimed, qualified


def _linear_block_reason(block, name, groups, kernel) -> str | None:
    conv, bn = getattr(block, "conv", None), getattr(block, "bn", None)
    if not isinstance(conv, nn.Conv2d) or type(bn) is not nn.BatchNorm2d or bn.running_mean is None:
        return f"{name} is not a conv + BatchNorm2d block"
    if conv.groups != groups or conv.kernel_size != kernel or conv.stride != (1, 1) or conv.padding != (0, 0) \
            or conv.in_channels != groups or conv.out_channels != groups:
        return f"{name} is not a depthwise {kernel} conv without padding over {groups} channels"
    return None


def head_reason(head: nn.Module) -> str | None:
    h = getattr(head, "SEDDAHead", None)
    if h is None:
        return "no SEDDAHead"
    c = getattr(getattr(getattr(h, "Linear_h", None), "conv", None), "in_channels", None)
    if c is None:
        return "SEDDAHead.Linear_h has no conv"
    size = h.Linear_h.conv.kernel_size[1]
    for name, kernel in (("Linear_h", (1, size)), ("Linear_w", (size, 1))):
        reason = _linear_block_reason(getattr(h, name, None), f"SEDDAHead.{name}", c, kernel)
        if reason:
            return reason
    conv1, bn1 = getattr(h, "conv1", None), getattr(h, "bn1", None)
    if not (isinstance(conv1, nn.Conv2d) and conv1.kernel_size == (1, 1) and conv1.in_channels == c
            and type(bn1) is nn.BatchNorm2d and bn1.num_features == conv1.out_channels and bn1.running_mean is not None):
        return "SEDDAHead.conv1/bn1 are not a 1×1 conv with its BatchNorm2d"
    for name in ("conv2", "conv3"):
        conv = getattr(h, name, None)
        if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.in_channels == conv1.out_channels
                and conv.out_channels == c):
            return f"SEDDAHead.{name} is not a 1×1 conv back to {c} channels"
    fc = getattr(h, "fc", None)
    kinds = (nn.Linear, nn.ReLU, nn.Linear, nn.Sigmoid)
    if not (isinstance(fc, nn.Sequential) and len(fc) == 4 and all(type(m) is k for m, k in zip(fc, kinds))
            and fc[0].bias is None and fc[2].bias is None and fc[0].in_features == c and fc[2].out_features == c):
        return "SEDDAHead.fc is not Sequential(Linear(no bias), ReLU, Linear(no bias), Sigmoid)"
    return None


def ela_reason(ela) -> str | None:
    con1, gn = getattr(ela, "con1", None), getattr(ela, "GN", None)
    if not (isinstance(con1, nn.Conv1d) and con1.groups == con1.in_channels == con1.out_channels
            and con1.stride == (1,) and con1.kernel_size[0] % 2 == 1 and con1.padding == (con1.kernel_size[0] // 2,)
            and con1.dilation == (1,) and con1.padding_mode == "zeros" and con1.bias is None):
        return "ela.con1 is not a same-padded depthwise Conv1d (odd kernel, no bias)"
    if type(gn) is not nn.GroupNorm or gn.num_channels != con1.in_channels:
        return "ela.GN is not a GroupNorm over con1's channels"
    return None


class FusedMHAN(FusedUnit):
    pattern = "mhan_attention"

    def __init__(self, ela, heads: dict, linear, fc, owner: str = "", **kw):
        super().__init__({qualified(owner, "ela"): ela, **heads, qualified(owner, "Linear"): linear,
                          qualified(owner, "fc"): fc}, **kw)
        self.owner = owner  # the network's name in the model optimised ("" for the model itself)
        self.ela, self.heads, self.linear, self.fc = ela, [m.SEDDAHead for m in heads.values()], linear, fc
        self.num_heads = len(self.heads)
        self.channels = linear.conv.in_channels
        self.size = tuple(self.heads[0].Linear_h.conv.kernel_size[1:]) + tuple(self.heads[0].Linear_w.conv.kernel_size[:1])

    def fold(self, device):
        f32 = torch.float32

        def stack(fn):
            return torch.stack([fn(h) for h in self.heads]).to(device, f32)

        def folded(block, i):
            return fold_batchnorm(block.conv.weight, block.conv.bias, block.bn)[i]

        kl, bl = fold_batchnorm(self.linear.conv.weight, self.linear.conv.bias, self.linear.bn)
        gn, c = self.ela.GN, self.channels
        heads = {
            "kh": stack(lambda h: folded(h.Linear_h, 0).flatten(1)), "bh": stack(lambda h: folded(h.Linear_h, 1)),
            "kw": stack(lambda h: folded(h.Linear_w, 0).flatten(1)), "bw": stack(lambda h: folded(h.Linear_w, 1)),
            "w1": stack(lambda h: fold_batchnorm(h.conv1.weight, h.conv1.bias, h.bn1)[0].flatten(1)),
            "b1": stack(lambda h: fold_batchnorm(h.conv1.weight, h.conv1.bias, h.bn1)[1]),
            "w2": stack(lambda h: h.conv2.weight.double().flatten(1)), "b2": stack(lambda h: layer_bias(h.conv2)),
            "w3": stack(lambda h: h.conv3.weight.double().flatten(1)), "b3": stack(lambda h: layer_bias(h.conv3)),
            "s1": stack(lambda h: h.fc[0].weight.double()), "s2": stack(lambda h: h.fc[2].weight.double()),
            "kl": kl.flatten(1).to(device, f32), "bl": bl.to(device, f32),
            "wfc": self.fc.weight.to(device, f32), "bfc": layer_bias(self.fc).to(device, f32),
        }
        return {"heads": tuple(heads[n] for n in MHAN_HEADS_ARGS),  # the mhan_heads op's weights, in its order
                "ela_w": self.ela.con1.weight.flatten(1).to(device, f32),
                "gn_w": (gn.weight if gn.affine else torch.ones(c)).to(device, f32),
                "gn_b": (gn.bias if gn.affine else torch.zeros(c)).to(device, f32)}

    def forward(self, x):
        """x: the trunk's map. Returns (logits, x after ELA, list of K head maps)."""
        if x.dim() != 4 or x.shape[1] != self.channels or tuple(x.shape[2:]) != self.size:
            raise ValueError(f"MHAN's heads expect a B×{self.channels}×{self.size[0]}×{self.size[1]} feature map "
                             f"(112×112 images), got shape {tuple(x.shape)}")
        f = self.folded(x.device)
        x = self.call(ela_op, x.to(self.dtype), f["ela_w"], f["gn_w"], f["gn_b"], self.ela.GN.num_groups, self.ela.GN.eps)
        logits, maps = self.call(mhan_heads, x, *f["heads"])
        return logits, x, list(maps.unbind(1))

    def reference(self, modules, x):
        ela, *rest = modules
        heads, linear, fc = rest[:self.num_heads], rest[-2], rest[-1]
        x = ela(x)
        maps = [h(x) for h in heads]
        m = maps[0]
        for other in maps[1:]:
            m = torch.max(m, other)
        return fc(linear(x * m).flatten(1))

    def run(self, model, x):
        """MHAN's forward on the trunk's map; autograd through the input takes the original."""
        if torch.is_grad_enabled() and x.requires_grad:
            return original_forward(model, x)
        return self.forward(model.features(x))

    def install(self, model):
        network = model.get_submodule(self.owner)
        self.install_forward(network, f"{network._get_name()}[ferfuse]")
        for name, module in self.covered.items():
            if (name := name.rpartition(".")[2]).startswith("cat_head") or name == "ela":
                self.rebind(module, None, f"{module._get_name()}[fused: {self.pattern}]")


class MHANPattern:
    name = "mhan_attention"

    def find(self, model: nn.Module, claimed: set[str], **kw):
        return find_networks(model, claimed, self.find_in, **kw)

    def find_in(self, model: nn.Module, prefix: str, claimed: set[str], **kw):
        """The attention of `model` (named `prefix` in the model optimised), if it is MHAN-shaped."""
        heads = {name: m for n, m in model.named_children()
                 if hasattr(m, "SEDDAHead") and not is_claimed(name := qualified(prefix, n), claimed)}
        if not heads:
            return []
        reasons = {n: head_reason(m) for n, m in heads.items()}
        skips = [Skip(self.name, n, r) for n, r in reasons.items() if r]
        if skips:
            return skips
        ela, linear, fc = getattr(model, "ela", None), getattr(model, "Linear", None), getattr(model, "fc", None)
        c = next(iter(heads.values())).SEDDAHead.Linear_h.conv.in_channels
        size = next(iter(heads.values())).SEDDAHead.Linear_h.conv.kernel_size[1]
        reason = (
            ("the model has no `features` trunk" if not isinstance(getattr(model, "features", None), nn.Module) else None)
            or ("no `ela`" if ela is None else ela_reason(ela))
            or ("no `Linear` block" if linear is None else _linear_block_reason(linear, "Linear", c, (size, size)))
            or (None if isinstance(fc, nn.Linear) and fc.in_features == c else f"no `fc` Linear({c}, classes)")
            or (f"num_head is {model.num_head} but {len(heads)} heads were found"
                if getattr(model, "num_head", len(heads)) != len(heads) else None))
        if reason:
            return [Skip(self.name, ", ".join(heads), reason)]
        return [FusedMHAN(ela, heads, linear, fc, owner=prefix, **kw)]
