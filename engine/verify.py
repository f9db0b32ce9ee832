"""Reference-vs-fused comparison against a float64 copy of the original model, and the error
budgets of ../shared/spec/engine.md: every bound is relative to the original path's own error."""
import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Budget:
    """A fused path passes when its relative error against float64 is at most
    k × (the original path's own error at the working precision, same inputs) + floor."""
    k: float
    floor: float  # covers an original path whose own error happens to be near zero
    top1: float  # top-1 agreement of the logits with the float64 reference, a separate check
    why: str


# ‖out−ref‖/‖ref‖ against float64; one row per precision (engine.md, "Error budgets").
BUDGETS = {
    "fp32": Budget(4, 1e-6, 1.0, "fp32 rounding in another summation order (oneDNN's blocked GEMMs, Triton's "
                                 "tiles, folded weights rounded once) errs like the original path; the floor is "
                                 "~16 units in the last place (u = 6e-8)"),
    "tf32": Budget(4, 2e-3, 0.99, "TF32 products keep 10 mantissa bits (u = 4.9e-4) in both paths; the original "
                                  "runs with TF32 allowed"),
    "fp16": Budget(4, 2e-3, 0.98, "fp16 (u = 4.9e-4): the original model is run in fp16 for the baseline"),
    "bf16": Budget(4, 1.6e-2, 0.98, "bf16 (u = 3.9e-3): the original model is run in bf16 for the baseline"),
}
# Winograd F(4×4, 3×3) and F(2×2, 3×3) are exact in real arithmetic, but their transforms scale
# values by up to 8 and 1/24 and sum 36 products per tile: per convolution fp32 rounding grows
# 5-10× over a direct convolution on the same data (tests/engine/test_winograd.py measures it),
# so those forms get k = 16 at the unit; the logits keep the precision's row.
WINOGRAD_K = 16


def budget(precision: str, form: str = "onednn", logits: bool = False) -> tuple[float, float, float]:
    """(k, floor, top-1 minimum) for a fused path in `precision`, its convs run as `form`."""
    row = BUDGETS[precision]
    k = WINOGRAD_K if form.startswith("winograd") and not logits else row.k
    return k, row.floor, row.top1


def allowed_error(baseline: float, precision: str, form: str = "onednn", logits: bool = False) -> float:
    """The budget itself: k × `baseline` (the original path's own error) + floor, for a fused path
    in `precision` whose convs run as `form`."""
    k, floor, _ = budget(precision, form, logits)
    return k * baseline + floor


@contextlib.contextmanager
def working_precision(precision: str):
    """The original path's baseline runs as the user's model would at this precision: TF32 allowed for tf32."""
    if precision != "tf32":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


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


def other_memory_format(t):
    """`t` in the other of the two usual layouts of an image batch (NCHW <-> channels_last); other
    tensors as they are."""
    if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() == 4):
        return t
    if t.is_contiguous():
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def original_error(run, inputs: tuple, expected: torch.Tensor) -> float:
    """The original path's own relative error against float64 `expected`, the baseline of every
    budget: the larger of its errors on `inputs` and on the same inputs in the other memory format.

    One summation order is one draw of fp32's error, and on an ill-conditioned input two draws
    differ by over 10×: on MACA-Net's batch-32 benchmark (AVX-512) the original model's logits
    erred 4.1e-6 in NCHW (oneDNN's blocked direct kernel) and 5.8e-5 in channels_last (its brgemm
    kernel), from its 26th image, whose heads magnify a 1e-6 change of the features 240× (float64)
    and on which the fp32 heads alone err 1.5e-4. A budget on the lucky draw alone rejects correct orders.
    A forward that cannot take the other layout (a `.view` of a map) gives the one draw."""
    errs = [errors(first_tensor(run(*inputs)), expected)[1]]
    other = tuple(other_memory_format(t) for t in inputs)
    if any(o is not t for o, t in zip(other, inputs)):
        try:
            errs.append(errors(first_tensor(run(*other)), expected)[1])
        except RuntimeError:
            pass
    return max(errs)


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
