"""Exact weight transforms (eval mode, running statistics), computed in float64.

Each function takes the original modules' tensors and returns new tensors; nothing here
mutates a model. See ../shared/spec/engine.md, "Exact algebra".
"""
import torch
import torch.nn as nn


def batchnorm_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """BN(y) = y·t + s with t = γ/√(σ²+ε), s = β − μ·t (float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    var = bn.running_var.double()
    t = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        t = t * bn.weight.double()
    s = -bn.running_mean.double() * t
    if bn.bias is not None:
        s = s + bn.bias.double()
    return t, s


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a BatchNorm into the conv or linear layer before it: W' = W·t, b' = β + (b − μ)·t.

    `weight` has the output channels first (conv: O×I×kh×kw, linear: O×I). Returns float64.
    """
    t, s = batchnorm_scale_shift(bn)
    w = weight.double() * t.view(-1, *([1] * (weight.dim() - 1)))
    b = s if bias is None else s + bias.double() * t
    return w, b


def merge_asymmetric_kernels(w3x3, b3x3, w1x3, b1x3, w3x1, b3x1) -> tuple[torch.Tensor, torch.Tensor]:
    """One 3×3 conv equal to the sum of a 3×3 (padding 1), a 1×3 (padding (0,1)) and a 3×1
    (padding (1,0)) conv on the same input: the 1×3 adds into the middle row, the 3×1 into the
    middle column, and the biases add. Exact, borders included, because all three centre on
    the same pixel with zero padding."""
    w = w3x3.double().clone()
    w[:, :, 1:2, :] += w1x3.double()
    w[:, :, :, 1:2] += w3x1.double()
    return w, b3x3.double() + b1x3.double() + b3x1.double()


def layer_bias(layer: nn.Module) -> torch.Tensor:
    """The layer's bias in float64, zeros where it has none."""
    if layer.bias is not None:
        return layer.bias.double()
    return torch.zeros(layer.weight.shape[0], dtype=torch.float64, device=layer.weight.device)
