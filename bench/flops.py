"""Parameters and multiply-adds of the reference and the optimised model, counted by fvcore.

Convention (as the FER papers tabulate "FLOPs"): one multiply-add counts once; fvcore's defaults
also count BatchNorm (one per element), which is why folding lowers the optimised count beyond
the merged 1×3/3×1 branches. ferfuse's fused ops are counted by the FLOP formula of their declarations (kernels/registry.py), so
the optimised figure is a real count of what runs, not an estimate.

    ferfuse flops --model dan [--input-size 224] [--json]
"""
import copy

import torch
from fvcore.nn import FlopCountAnalysis, flop_count_table
from fvcore.nn.jit_handles import get_shape

from ferfuse import engine, kernels, models


def fused_op_handle(op):
    """fvcore's handle for a declared fused op: its inputs named by the op's schema, tensors as
    shapes, and the declaration's own FLOP formula."""
    def handle(inputs, outputs):
        values = {}
        for name, value in zip(op.arg_names, inputs):
            shape = get_shape(value) if value.isCompleteTensor() else None
            values[name] = tuple(shape) if shape is not None else value.toIValue()
        return op.count_flops(values)
    return handle


def count(model: torch.nn.Module, inputs: tuple) -> dict:
    analysis = FlopCountAnalysis(model, inputs)
    for op in kernels.ops():  # every declared op, so a new one cannot go uncounted
        analysis.set_op_handle(op.qualname, fused_op_handle(op))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total = analysis.total()
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "flops": int(total),
        "by_module": {k: int(v) for k, v in analysis.by_module().items() if k.count(".") < 1 and v},
        "unsupported_ops": dict(analysis.unsupported_ops()),
        "table": flop_count_table(analysis, max_depth=1),
    }


def flops_report(model_name: str, input_size: int | None = None, **model_kwargs) -> dict:
    """fvcore counts for the reference model and for the optimised one (torch backend with aten
    convolutions, so every fused op shows up as a ferfuse:: op with its handle)."""
    torch.manual_seed(0)
    reference = models.randomize_batchnorm(models.get(model_name, **model_kwargs)).eval()
    c, h, w = reference.input_size
    if input_size is not None:
        h = w = input_size
    x = torch.randn(1, c, h, w)
    optimized = copy.deepcopy(reference)
    engine.optimize(optimized, backend="torch", executor="aten", example_inputs=x)
    with torch.no_grad():
        ref = count(reference, (x,))
        opt = count(optimized, (x,))
    opt["fused"] = [e.pattern + ": " + ", ".join(e.modules) for e in engine.report(optimized).fused
                    if e.pattern != "conv_bn"]
    opt["folded_conv_bn"] = sum(e.pattern == "conv_bn" for e in engine.report(optimized).fused)
    return {"model": model_name, "input": [1, c, h, w], "convention": "one multiply-add counts as one FLOP",
            "reference": ref, "optimized": opt}


def format_report(rep: dict) -> str:
    ref, opt = rep["reference"], rep["optimized"]
    lines = [f"{rep['model']} at {rep['input'][2]}×{rep['input'][3]} (batch 1; {rep['convention']})",
             f"{'':>10} {'params':>14} {'multiply-adds':>16}",
             f"{'reference':>10} {ref['params']:>14,} {ref['flops'] / 1e9:>14.4f} G",
             f"{'optimized':>10} {opt['params']:>14,} {opt['flops'] / 1e9:>14.4f} G"
             f"   ({100 * (1 - opt['flops'] / ref['flops']):.1f}% fewer; parameters are kept, folded weights are caches)",
             "", "reference by module:", ref["table"], "", "optimized by module:", opt["table"]]
    for label, r in (("reference", ref), ("optimized", opt)):
        if r["unsupported_ops"]:
            lines.append(f"{label}: ops fvcore could not count (not in the totals): "
                         + ", ".join(f"{k} ×{v}" for k, v in sorted(r["unsupported_ops"].items())))
    lines.append("fused: " + "; ".join(opt["fused"]) + f"; {opt['folded_conv_bn']} conv+BN folded")
    return "\n".join(lines)
