"""From a trained nn.Module to a fused one: find structures, fold weights, swap, verify, report."""
from .export import export_onnx
from .optimize import attention_maps, is_optimized, optimize, report, revert
from .report import Report

__all__ = ["optimize", "report", "revert", "is_optimized", "attention_maps", "Report", "export_onnx"]
