"""optimize(): walk, match, swap, verify, report; revert()."""
import copy
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..kernels.compat import INTERPRET
from . import winograd
from .executors import EXECUTORS, ONEDNN_EXECUTORS, onednn_available
from .fused import FusedUnit
from .guard import InputGuard
from .patterns import Skip, all_patterns
from .report import FusedEntry, Report
from .verify import capture_inputs, errors, first_tensor, top1_agreement, tolerances

STATE_ATTR = "_ferfuse_state"
_PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class EngineState:
    units: list[FusedUnit]
    report: Report
    guard: InputGuard | None = None


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and not INTERPRET else "torch"
    if backend == "triton":
        if device.type == "cpu" and not INTERPRET:
            raise ValueError("backend='triton' on a CPU model needs TRITON_INTERPRET=1 set before ferfuse "
                             "is imported (the Triton interpreter); use backend='torch' on CPU otherwise")
        if device.type == "cuda" and INTERPRET:
            raise ValueError("backend='triton' on CUDA tensors cannot run with TRITON_INTERPRET=1 set")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"backend='triton' runs on CUDA (or CPU under the interpreter), not {device.type}")
    return backend


def resolve_executor(executor: str, device: torch.device, backend: str, dtype: torch.dtype, rep: Report) -> str:
    """How folded convolutions run (engine/executors.py). `auto`: oneDNN for fp32 CPU models on the
    torch backend when this torch build has it (optimize() then times oneDNN, Winograd and aten on
    the example input and keeps the fastest), aten ops otherwise (cuDNN on GPU)."""
    if executor not in ("auto", *EXECUTORS):
        raise ValueError(f"executor must be 'auto', {', '.join(repr(e) for e in EXECUTORS)}, got {executor!r}")
    fits = device.type == "cpu" and backend == "torch" and dtype == torch.float32
    if executor in ONEDNN_EXECUTORS and not fits:
        raise ValueError(f"executor={executor!r} runs fp32 CPU models on the torch backend only")
    if executor in ("auto", *ONEDNN_EXECUTORS) and fits:
        if not onednn_available():
            if executor != "auto":
                raise ValueError(f"executor={executor!r}: this torch build has no oneDNN convolution ops")
            rep.notes.append("oneDNN is not available in this torch build: convolutions run as aten ops")
            return "aten"
        if executor == "winograd":
            reason = winograd.unavailable_reason()
            if reason:
                raise ValueError(f"executor='winograd': the Winograd transforms cannot be built here: {reason}")
        return "onednn" if executor == "auto" else executor
    return "aten"


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype, bool]:
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"precision {precision!r} is for CUDA models; this model is on {device}")
    return _PRECISIONS[precision], precision == "tf32"


def default_example_inputs(model: nn.Module, device: torch.device, batch: int = 2) -> tuple[torch.Tensor]:
    """Random inputs of the model's input shape: `model.input_size` (ferfuse's models), else the
    first conv's channels at 224×224."""
    size = getattr(model, "input_size", None)
    if size is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        size = (first.in_channels if first is not None else 3, 224, 224)
    gen = torch.Generator().manual_seed(0)
    return (torch.randn((batch, *size), generator=gen).to(device),)


def is_optimized(model: nn.Module) -> bool:
    return STATE_ATTR in model.__dict__


def report(model: nn.Module) -> Report:
    """What optimize() did to `model`."""
    if not is_optimized(model):
        raise ValueError(f"{type(model).__name__} has not been optimised by ferfuse")
    return model.__dict__[STATE_ATTR].report


def revert(model: nn.Module) -> nn.Module:
    """Restore the original forward of every module optimize() touched."""
    state = model.__dict__.pop(STATE_ATTR, None)
    if state is not None:
        if state.guard is not None:
            state.guard.uninstall(model)
        for unit in state.units:
            unit.uninstall()
    return model


def _entry(unit: FusedUnit) -> FusedEntry:
    return FusedEntry(unit.pattern, unit.names(), unit.backend)


def optimize(model: nn.Module, *, backend: str = "auto", precision: str = "fp32", verify: bool = True,
             example_inputs=None, strict: bool = False, executor: str = "auto") -> nn.Module:
    """Fuse `model` in place for inference and return it.

    Targets are found by structure (see engine/patterns); parameters stay the truth and folded
    weights are caches. With `verify` (default) the fused and a float64 reference path run on the
    same inputs before this returns: a fused unit over tolerance is reverted and reported, or
    raises with `strict=True`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize() takes a torch.nn.Module, got {type(model).__name__}")
    revert(model)
    device = _device_of(model)
    backend = resolve_backend(backend, device)
    dtype, allow_tf32 = resolve_precision(precision, device)
    rep = Report(type(model).__name__, backend, precision, str(device))
    requested_executor = executor
    executor = resolve_executor(executor, device, backend, dtype, rep)
    rep.executor = executor
    reference = copy.deepcopy(model).double().eval() if verify else None
    # built before anything is swapped: its dry runs use the original forward
    guard = InputGuard(model, device, nonfinite_to_original=executor in ONEDNN_EXECUTORS)

    units, claimed = [], set()
    for pattern in all_patterns():
        for item in pattern.find(model, claimed, backend=backend, dtype=dtype, allow_tf32=allow_tf32,
                                 executor=executor):
            if isinstance(item, Skip):
                rep.skipped.append(item)
            else:
                units.append(item)
                claimed.update(item.names())
    for unit in units:
        unit.install(model)
        if unit.torch_only and backend == "triton":
            rep.notes.append(f"{unit.pattern} ({', '.join(unit.names())}): no Triton kernel yet, runs as torch ops")
    kept: list[str] = []  # attention left on PyTorch, noted once (not again for a layer's own self_attn)
    for name, module in model.named_modules():
        if isinstance(module, (nn.TransformerEncoderLayer, nn.MultiheadAttention)) and name and \
                not any(name.startswith(k + ".") for k in kept):
            kept.append(name)
            rep.notes.append(f"{name} ({type(module).__name__}): stays on PyTorch's fused attention "
                             "(scaled_dot_product_attention), not fused by ferfuse")
    state = EngineState(units, rep)
    model.__dict__[STATE_ATTR] = state
    if units:
        guard.install(model)  # outermost: checks run before any fused unit launches a kernel
        state.guard = guard
    if units and executor == "onednn" and requested_executor == "auto":
        example = example_inputs if example_inputs is not None else default_example_inputs(model, device)
        _choose_executor(model, state, example if isinstance(example, tuple) else (example,))
    if not units:
        warnings.warn(f"ferfuse.optimize: nothing in {type(model).__name__} matched a fusable structure; "
                      f"the model runs unchanged ({len(rep.skipped)} candidates skipped, see report(model))",
                      stacklevel=2)
    entries = {id(u): _entry(u) for u in units}
    if verify and units:
        _verify(model, reference, state, entries, example_inputs, device, strict)
    rep.fused = [entries[id(u)] for u in state.units]
    if state.guard is not None and state.guard.nonfinite_to_original:
        spread = "; a Winograd tile spreads NaN over 4×4 outputs" if rep.executor == "winograd" else ""
        rep.notes.append("inputs holding NaN or Inf run the original forward (oneDNN's fused ReLU would map "
                         f"NaN to 0{spread}); finite inputs run fused")
    return model


def _uninstall_unit(model, state: EngineState, unit: FusedUnit):
    """Take one unit out; the guard, which wraps the root's forward, is re-wrapped around what is left."""
    if state.guard is not None:
        state.guard.uninstall(model)
    unit.uninstall()
    state.units.remove(unit)
    if state.guard is not None and state.units:
        state.guard.install(model)
    elif state.guard is not None:
        state.guard = None


def _set_executor(state: EngineState, executor: str):
    for unit in state.units:
        unit.executor = executor
        unit._cache = None  # folded weights are rebuilt for the new executor
    if state.guard is not None:
        state.guard.nonfinite_to_original = executor in ONEDNN_EXECUTORS
    state.report.executor = executor


def _choose_executor(model, state: EngineState, inputs: tuple, runs: int = 3):
    """oneDNN wins on ResNet-style trunks, and Winograd on top of it where the 3×3 convolutions
    see large maps; on networks of many small ops (MHAN's mixed depthwise convs and coordinate
    attention) the channels_last layout costs more than it gains. Time each on the example input
    (the first call packs weights, so it is not timed) and keep the fastest."""
    import time

    candidates = ["onednn", "winograd", "aten"]
    reason = winograd.unavailable_reason()
    if reason:
        candidates.remove("winograd")
        state.report.notes.append(f"Winograd convolutions unavailable ({reason}): not among the executors timed")
    timings = {}
    for executor in candidates:
        _set_executor(state, executor)
        _run_eval(model, inputs)
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            _run_eval(model, inputs)
            samples.append(time.perf_counter() - t0)
        timings[executor] = sorted(samples)[runs // 2] * 1e3
    best = min(timings, key=timings.get)
    _set_executor(state, best)
    state.report.notes.append(f"convolution executor chosen by timing on {tuple(inputs[0].shape)}: "
                     + ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()) + f" -> {best}")


def _run_eval(model, inputs):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(*inputs)
    finally:
        model.train(was_training)


def _verify(model, reference, state: EngineState, entries, example_inputs, device, strict):
    rep = state.report
    op_tol, logit_tol, top1_min = tolerances(rep.backend, rep.precision, rep.executor)
    if example_inputs is None:
        example_inputs = default_example_inputs(model, device)
    elif isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    ref_inputs = tuple(t.double() if t.is_floating_point() else t for t in example_inputs)
    rep.example_shape = tuple(example_inputs[0].shape)
    rep.tolerance = (op_tol, logit_tol)

    # each unit on the input its first covered module saw in the float64 reference run
    ref_out, seen = capture_inputs(reference, [u.names()[0] for u in state.units], ref_inputs)
    ref_logits = first_tensor(ref_out)
    for unit in list(state.units):
        name = unit.names()[0]
        if name not in seen:
            rep.notes.append(f"{unit.pattern} {name}: not reached by the verification inputs")
            continue
        x64 = seen[name]
        with torch.no_grad():
            expected = unit.reference([reference.get_submodule(n) for n in unit.names()], x64)
            got = unit.forward(x64.to(example_inputs[0].dtype))
        entry = entries[id(unit)]
        entry.abs_error, entry.rel_error = errors(first_tensor(got), first_tensor(expected))
        if not entry.rel_error <= op_tol:
            why = f"relative error {entry.rel_error:.2e} over tolerance {op_tol:.0e}"
            if strict:
                revert(model)
                raise RuntimeError(f"ferfuse.optimize(strict=True): {unit.pattern} {', '.join(unit.names())}: {why}")
            _uninstall_unit(model, state, unit)
            rep.reverted.append((entry, why))

    logits = first_tensor(_run_eval(model, example_inputs))
    rep.logits_abs_error, rep.logits_rel_error = errors(logits, ref_logits)
    rep.top1_agreement = top1_agreement(logits, ref_logits)
    rep.verified = True
    if not (rep.logits_rel_error <= logit_tol and rep.top1_agreement >= top1_min):
        why = (f"logits relative error {rep.logits_rel_error:.2e} (tolerance {logit_tol:.0e}), "
               f"top-1 agreement {rep.top1_agreement:.2%}")
        if strict:
            revert(model)
            raise RuntimeError(f"ferfuse.optimize(strict=True): {why}")
        for unit in list(state.units):
            _uninstall_unit(model, state, unit)
            rep.reverted.append((entries[id(unit)], why))
        rep.notes.append(f"every fused unit was reverted: {why}; the model runs its original forward")
