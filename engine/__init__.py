"""From a trained nn.Module to a fused one: find structures, fold weights, swap, verify, report."""
from .export import export_onnx
from .optimize import optimize, report, revert, is_optimized
from .report import Report

__all__ = ["optimize", "report", "revert", "is_optimized", "Report", "export_onnx"]
