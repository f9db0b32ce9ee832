"""Reference-vs-fused comparison against a float64 copy of the original model, and the
tolerance table of ../shared/spec/engine.md."""
import torch
import torch.nn as nn

# (per fused op, logits, top-1 agreement), relative error ‖out−ref‖/‖ref‖ against float64
TOLERANCES = {
    ("torch", "fp32"): (1e-6, 1e-5, 1.0),
    ("triton", "fp32"): (1e-5, 1e-4, 1.0),  # IEEE dot, but other reduction orders than cuDNN/oneDNN
    ("torch", "tf32"): (3e-3, 5e-3, 0.99),
    ("triton", "tf32"): (3e-3, 5e-3, 0.99),
    ("torch", "fp16"): (1e-2, 2e-2, 0.98),
    ("triton", "fp16"): (1e-2, 2e-2, 0.98),
    ("torch", "bf16"): (1e-2, 2e-2, 0.98),
    ("triton", "bf16"): (1e-2, 2e-2, 0.98),
}
# Winograd F(4×4, 3×3) convolutions (engine/winograd.py) are exact in real arithmetic, but their
# transforms scale values by up to 8 and 1/24 and add 36 products per tile: fp32 rounding grows to
# ~1.5e-6 relative per convolution (measured; direct oneDNN ~1.5e-7), so the fp32 CPU row of the
# Triton path applies (IEEE arithmetic, another summation order).
WINOGRAD_TOLERANCE = (1e-5, 1e-4, 1.0)


def tolerances(backend: str, precision: str, executor: str = "aten") -> tuple[float, float, float]:
    """(per fused op, logits, top-1 agreement) for a fused path."""
    if executor == "winograd":
        return WINOGRAD_TOLERANCE
    return TOLERANCES[(backend, precision)]


def first_tensor(out) -> torch.Tensor:
    """The logits: the output itself, or the first element of a tuple/list output."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs error, relative error); NaN where the reference has none counts as infinite."""
    out, ref = out.double(), ref.double()
    if out.shape != ref.shape:
        return float("inf"), float("inf")
    same_nan = torch.isnan(out) == torch.isnan(ref)
    if not bool(same_nan.all()):
        return float("inf"), float("inf")
    keep = ~torch.isnan(ref)
    diff = (out - ref)[keep]
    if diff.numel() == 0:
        return 0.0, 0.0
    abs_err = diff.abs().max().item()
    denom = ref[keep].norm().item()
    rel = diff.norm().item() / denom if denom > 0 else diff.norm().item()
    return abs_err, rel


def top1_agreement(out: torch.Tensor, ref: torch.Tensor) -> float:
    if out.dim() != 2:
        return 1.0
    return (out.argmax(1) == ref.argmax(1)).double().mean().item()


def capture_inputs(model: nn.Module, names: list[str], inputs: tuple) -> tuple[object, dict]:
    """Run `model(*inputs)` and return its output with the first positional input seen by each
    named submodule (its first call)."""
    seen, hooks = {}, []
    for name in set(names):
        module = model.get_submodule(name)

        def hook(_m, args, name=name):
            seen.setdefault(name, args[0])

        hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            out = model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return out, seen
