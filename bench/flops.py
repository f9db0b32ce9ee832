"""Parameters and multiply-adds of the reference and the optimised model, counted by fvcore.

Convention (as the FER papers tabulate "FLOPs"): one multiply-add counts once; fvcore's defaults
also count BatchNorm (one per element), which is why folding lowers the optimised count beyond
the merged 1×3/3×1 branches. ferfuse's fused ops are counted through handles registered here, so
the optimised figure is a real count of what runs, not an estimate.

    ferfuse flops --model dan [--input-size 224] [--json]
"""
import copy

import torch
from fvcore.nn import FlopCountAnalysis, flop_count_table
from fvcore.nn.jit_handles import get_shape

from ferfuse import engine, models


def _spatial_attention_map_flops(inputs, outputs):
    """1×1 GEMM for all heads + merged 3×3 implicit GEMM (+ the gate's weighted sum)."""
    B, C, H, W = get_shape(inputs[0])
    KR = get_shape(inputs[1])[0]
    K, O, R = get_shape(inputs[3])[:3]
    macs = B * H * W * KR * C + B * H * W * K * O * R * 9
    if len(inputs) > 5 and get_shape(inputs[5]) is not None:
        macs += B * H * W * K * O
    return macs


def _dan_head_fusion_flops(inputs, outputs):
    """Pooling by the maps (K·C·HW), the squeeze-excite MLP (2·K·J·C), the classifier (N·C)."""
    B, C, H, W = get_shape(inputs[0])
    K = get_shape(inputs[1])[1]
    J = get_shape(inputs[2])[1]
    N = get_shape(inputs[6])[0]
    return B * (K * C * H * W + 2 * K * J * C + N * C)


FUSED_OP_HANDLES = {
    "ferfuse::spatial_attention_map": _spatial_attention_map_flops,
    "ferfuse::dan_head_fusion": _dan_head_fusion_flops,
}


def count(model: torch.nn.Module, inputs: tuple) -> dict:
    analysis = FlopCountAnalysis(model, inputs)
    for name, handle in FUSED_OP_HANDLES.items():
        analysis.set_op_handle(name, handle)
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
