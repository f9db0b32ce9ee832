"""The one place that probes versions and the Triton interpreter.

`TRITON_INTERPRET=1` is read by `@triton.jit` when a kernel module is imported, so `INTERPRET`
is fixed at import too: set the variable before importing ferfuse to run kernels on CPU tensors.
"""
import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_VERSION = triton.__version__
TORCH_VERSION = torch.__version__


def triton_runs_on(device: torch.device) -> bool:
    """Whether a Triton kernel can launch on tensors of `device` in this process."""
    if device.type == "cuda":
        return not INTERPRET
    return device.type == "cpu" and INTERPRET


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """`tl.dot` input precision: IEEE for fp32 (the fp32 tolerance promises it), TF32 only when
    asked; half types use tensor cores whatever this says."""
    return "tf32" if (dtype == torch.float32 and allow_tf32) else "ieee"


def check_input(name: str, t: torch.Tensor, *, dim: int, device: torch.device | None = None,
                dtypes=(torch.float32, torch.float16, torch.bfloat16)):
    """Raise a clear error before any launch when an input is not what a kernel expects."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"{name}: expected a {dim}-D tensor, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")


def expect_shapes(expected: dict, tensors: dict, context: str):
    """Raise a clear error for the first tensor whose shape is not `expected[name]`; `context`
    says what the shapes follow from (x's shape, the number of heads)."""
    for name, t in tensors.items():
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"{name}: expected shape {expected[name]} {context}, got {tuple(t.shape)}")
