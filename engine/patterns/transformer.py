"""nn.TransformerEncoderLayer (HAFEM's token mixer), its four linear layers on the tuned 1×1
convolution runner.

Why: in eval mode PyTorch runs the layer through its fused fast path, whose linear layers are MKL
GEMMs; on the 2-core AVX2 EPYC they ran HAFEM's 49×512 tokens at 60-100 GFLOP/s (4.4 ms a layer,
linear1 + ReLU alone 1.7 ms), where ONNX Runtime's MatMuls ran the same products at ~160 (2.3 ms a
layer). A linear layer over M tokens is a 1×1 convolution over an M×d×1×1 map, so each runs as a
`ConvRunner`: ferfuse's GEMM or oneDNN, as its first call at a token count timed faster on the
CPU in hand, with the bias, the ReLU and the residual add in the GEMM's epilogue.

Per layer: LayerNorm, in-projection (one GEMM for q, k and v), scaled_dot_product_attention over
the heads, out-projection + residual, LayerNorm, linear1 + activation, linear2 + residual, in the
order `norm_first` gives. Calls with a mask, or not of a 3-d float32 CPU batch on a oneDNN
executor (aten, export, CUDA), run the layer's own forward.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..algebra import layer_bias
from ..executors import ConvRunner
from ..fused import FusedUnit, original_forward, unit_of
from . import find_modules


def layer_reason(layer: nn.Module) -> str | None:
    """Why `layer` is not an nn.TransformerEncoderLayer this unit computes exactly."""
    if type(layer).forward is not nn.TransformerEncoderLayer.forward:
        return f"{type(layer).__name__} overrides TransformerEncoderLayer.forward"
    attn = layer.self_attn
    if not attn._qkv_same_embed_dim or attn.in_proj_weight is None:
        return "self_attn projects q, k and v from different widths"
    if attn.bias_k is not None or attn.add_zero_attn:
        return "self_attn adds bias_k/bias_v or a zero attention row"
    if not all(type(n) is nn.LayerNorm for n in (layer.norm1, layer.norm2)):
        return "norm1/norm2 are not nn.LayerNorm"
    # out_proj is MultiheadAttention's NonDynamicallyQuantizableLinear, an nn.Linear
    if not (type(layer.linear1) is nn.Linear and type(layer.linear2) is nn.Linear
            and isinstance(attn.out_proj, nn.Linear)):
        return "linear1/linear2/out_proj are not nn.Linear"
    return None


def _linear(weight, bias, device, dtype) -> ConvRunner:
    """A linear layer (weight O×I) as a 1×1 conv runner (weight O×I×1×1)."""
    return ConvRunner(weight.detach().to(device, dtype)[:, :, None, None], bias.detach().to(device, dtype))


class FusedTransformerLayer(FusedUnit):
    pattern = "transformer_layer"

    def __init__(self, name: str, layer: nn.TransformerEncoderLayer, **kw):
        super().__init__({name: layer}, **kw)
        self.layer = layer

    def fold(self, device):
        layer, attn, dt = self.layer, self.layer.self_attn, self.dtype
        in_bias = attn.in_proj_bias if attn.in_proj_bias is not None else \
            torch.zeros(attn.in_proj_weight.shape[0], device=device)
        return {"in_proj": _linear(attn.in_proj_weight, in_bias, device, dt),
                "out_proj": _linear(attn.out_proj.weight, layer_bias(attn.out_proj), device, dt),
                "linear1": _linear(layer.linear1.weight, layer_bias(layer.linear1), device, dt),
                "linear2": _linear(layer.linear2.weight, layer_bias(layer.linear2), device, dt)}

    def forward(self, src):
        layer, executor = self.layer, self.conv_executor()
        if executor == "aten" or src.dim() != 3 or src.dtype != torch.float32 or src.device.type != "cpu":
            return original_forward(layer, src)
        f = self.folded(src.device)
        seq_first = not layer.self_attn.batch_first
        x = src.reshape(-1, src.shape[-1]).contiguous()  # M tokens × d, in src's order
        relu = getattr(layer, "activation_relu_or_gelu", 0) == 1

        def attention(h, residual):  # residual + out_proj(attention(in_proj(h)))
            qkv = _tokens(f["in_proj"].run(_map(h), executor=executor))
            out = self.attend(qkv, src.shape, seq_first)
            return _tokens(f["out_proj"].run(_map(out), residual=_map(residual), executor=executor))

        def feed_forward(h, residual):  # residual + linear2(activation(linear1(h)))
            a = f["linear1"].run(_map(h), act="relu" if relu else None, executor=executor)
            if not relu:
                a = layer.activation(a)
            return _tokens(f["linear2"].run(a, residual=_map(residual), executor=executor))

        n1, n2 = layer.norm1, layer.norm2
        if layer.norm_first:
            x = attention(_norm(n1, x), x)
            x = feed_forward(_norm(n2, x), x)
        else:
            x = _norm(n1, attention(x, x))
            x = _norm(n2, feed_forward(x, x))
        return x.view(src.shape)

    def attend(self, qkv, shape, seq_first):
        """Multi-head scaled dot-product attention on the in-projection's M×3d output; M×d out."""
        heads = self.layer.self_attn.num_heads
        d = shape[-1]
        a, b = shape[0], shape[1]  # (T, B) sequence-first, else (B, T)
        qkv = qkv.view(a, b, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 1, 3, 0, 4) if seq_first else qkv.permute(2, 0, 3, 1, 4)  # each B×h×T×hd
        out = F.scaled_dot_product_attention(q, k, v)
        return (out.permute(2, 0, 1, 3) if seq_first else out.transpose(1, 2)).reshape(a * b, d)

    def reference(self, modules, x):
        return modules[0](x)

    def install(self, model):
        self.rebind(self.layer, _layer_forward, f"{self.layer._get_name()}[fused: transformer_layer]")


def _map(tokens):
    """M×d tokens as the M×d×1×1 map a 1×1 conv runner takes (the same memory)."""
    return tokens.view(tokens.shape[0], tokens.shape[1], 1, 1)


def _tokens(y):
    """A runner's M×N×1×1 output as M×N tokens."""
    return y.reshape(y.shape[0], y.shape[1])


def _norm(norm: nn.LayerNorm, x):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _layer_forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
    """TransformerEncoderLayer.forward's signature: masked calls run the layer's own forward."""
    unit = unit_of(self)
    if src_mask is None and src_key_padding_mask is None and not is_causal and unit.active(self):
        return unit.forward(src)
    return original_forward(self, src, src_mask, src_key_padding_mask, is_causal)


class TransformerLayerPattern:
    name = "transformer_layer"

    def find(self, model: nn.Module, claimed: set[str], **kw):
        return find_modules(self.name, model, claimed, lambda m: isinstance(m, nn.TransformerEncoderLayer),
                            layer_reason, FusedTransformerLayer, **kw)
