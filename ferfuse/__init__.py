"""ferfuse: fused inference for multi-head-attention facial-expression-recognition networks."""
from . import engine, kernels, models
from .engine import optimize, report, revert

__version__ = "0.1.0"
__all__ = ["engine", "kernels", "models", "optimize", "report", "revert", "__version__"]
