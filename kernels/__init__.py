"""Fused Triton kernels, one op per file: the kernel(s), a launcher that checks its inputs, and
the plain-torch reference of the same math. `ops` registers them with torch.library."""
from . import ops
from .head_fusion import head_fusion_reference, head_fusion_triton
from .spatial_attention import spatial_attention_map_reference, spatial_attention_map_triton

__all__ = ["ops", "head_fusion_reference", "head_fusion_triton",
           "spatial_attention_map_reference", "spatial_attention_map_triton"]
