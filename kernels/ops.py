"""torch.library registration of the fused ops: `ferfuse::<op>` with a CPU kernel (the torch
reference), a CUDA kernel (Triton) and a fake implementation, so optimised models still trace
(torch.compile, torch.export, fvcore's jit trace)."""
from typing import Optional

import torch
from torch import Tensor

from .head_fusion import head_fusion_reference, head_fusion_triton
from .spatial_attention import spatial_attention_map_reference, spatial_attention_map_triton


def torch_reference_directly(x: Tensor) -> bool:
    """For the torch backend: whether to call the torch reference itself rather than the op.
    On CUDA always (the op's CUDA kernel is Triton, not the torch backend); on CPU in eager calls,
    skipping the Python custom-op dispatcher (~150 µs a call) for the op's own CPU kernel. CPU
    traces (fvcore) and torch.compile see the op itself."""
    if x.device.type != "cpu":
        return True
    return not torch.jit.is_tracing() and not torch.compiler.is_compiling()


@torch.library.custom_op("ferfuse::spatial_attention_map", mutates_args=())
def spatial_attention_map(x: Tensor, w1: Tensor, b1: Tensor, w3: Tensor, b3: Tensor, gate_w: Optional[Tensor] = None,
                          gate_b: Optional[Tensor] = None, allow_tf32: bool = False) -> Tensor:
    return spatial_attention_map_reference(x, w1, b1, w3, b3, gate_w, gate_b)


@spatial_attention_map.register_kernel("cuda")
def _(x, w1, b1, w3, b3, gate_w=None, gate_b=None, allow_tf32=False):
    return spatial_attention_map_triton(x, w1, b1, w3, b3, gate_w, gate_b, allow_tf32)


@spatial_attention_map.register_fake
def _(x, w1, b1, w3, b3, gate_w=None, gate_b=None, allow_tf32=False):
    return x.new_empty((x.shape[0], w3.shape[0], x.shape[2], x.shape[3]), dtype=torch.float32)


@torch.library.custom_op("ferfuse::dan_head_fusion", mutates_args=())
def dan_head_fusion(x: Tensor, maps: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                    wfc: Tensor, bfc: Tensor, log_softmax: bool, allow_tf32: bool = False) -> tuple[Tensor, Tensor]:
    return head_fusion_reference(x, maps, w1, b1, w2, b2, wfc, bfc, log_softmax)


@dan_head_fusion.register_kernel("cuda")
def _(x, maps, w1, b1, w2, b2, wfc, bfc, log_softmax, allow_tf32=False):
    return head_fusion_triton(x, maps, w1, b1, w2, b2, wfc, bfc, log_softmax, allow_tf32)


@dan_head_fusion.register_fake
def _(x, maps, w1, b1, w2, b2, wfc, bfc, log_softmax, allow_tf32=False):
    return x.new_empty((x.shape[0], wfc.shape[0])), x.new_empty((x.shape[0], maps.shape[1], x.shape[1]))
