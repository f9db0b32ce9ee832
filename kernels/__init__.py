"""Fused Triton kernels, one op per file. Each file holds the kernel(s), a launcher that checks
its inputs, the plain-torch reference of the same math, and the op's declaration
(`registry.declare`). The declaration registers the op with torch.library and adds it to the
registry that the AOT compiler, the FLOP report and the tests iterate."""
from .registry import OPS, FusedOp, declare, ops

ops()  # declare every op of this package

__all__ = ["OPS", "FusedOp", "declare", "ops"]
