"""optimize(): walk, match, swap, verify, report; revert()."""
import contextlib
import functools
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..kernels.compat import INTERPRET
from . import memory, winograd
from .executors import EXECUTORS, ONEDNN_EXECUTORS, ExecutorChoice, onednn_available, use_executor, verification_forms
from .fused import FusedUnit, global_hooks, original_path
from .guard import InputGuard, model_copy, weight_probe
from .patterns import Skip, all_patterns, is_claimed
from .report import FusedEntry, Report
from .verify import allowed_error, budget, capture_inputs, errors, first_tensor, original_error, top1_agreement, working_precision

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


def resolve_executors(executor: str, device: torch.device, backend: str, dtype: torch.dtype,
                      rep: Report) -> tuple[str, ...]:
    """The executors folded convolutions may run on (engine/executors.py). `auto` on an fp32 CPU
    model on the torch backend: Winograd-tuned oneDNN and aten, timed per input shape on the first
    call of each (Winograd's per-conv timing already includes oneDNN's direct convolution); aten
    elsewhere (cuDNN on GPU)."""
    if executor not in ("auto", *EXECUTORS):
        raise ValueError(f"executor must be 'auto', {', '.join(repr(e) for e in EXECUTORS)}, got {executor!r}")
    fits = device.type == "cpu" and backend == "torch" and dtype == torch.float32
    if executor in ONEDNN_EXECUTORS and not fits:
        raise ValueError(f"executor={executor!r} runs fp32 CPU models on the torch backend only")
    if not fits or executor == "aten":
        return ("aten",)
    if not onednn_available():
        if executor != "auto":
            raise ValueError(f"executor={executor!r}: this torch build has no oneDNN convolution ops")
        rep.notes.append("oneDNN is not available in this torch build: convolutions run as aten ops")
        return ("aten",)
    reason = winograd.unavailable_reason()
    if executor == "winograd" and reason:
        raise ValueError(f"executor='winograd': the Winograd transforms cannot be built here: {reason}")
    if executor != "auto":
        return (executor,)
    if reason:
        rep.notes.append(f"Winograd convolutions unavailable ({reason}): oneDNN's direct convolutions and aten "
                         "are timed")
        return ("onednn", "aten")
    return ("winograd", "aten")


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype, bool]:
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"precision {precision!r} is for CUDA models; this model is on {device}")
    return _PRECISIONS[precision], precision == "tf32"


def default_example_inputs(model: nn.Module, device: torch.device, guard: InputGuard | None = None,
                           batch: int = 2) -> tuple[torch.Tensor]:
    """Random inputs of the model's input shape: `model.input_size` (ferfuse's models), else the
    first of the usual FER sizes the model takes (the guard's dry run; a ValueError naming the
    sizes tried where none fits)."""
    size = getattr(model, "input_size", None)
    if size is None:
        state = model.__dict__.get(STATE_ATTR)
        # an optimised model's own guard: its dry runs use the original forward
        guard = guard or (state.guard if state is not None else None) or InputGuard(model, device)
        size = guard.input_size()
    gen = torch.Generator().manual_seed(0)
    return (torch.randn((batch, *size), generator=gen).to(device),)


def is_optimized(model: nn.Module) -> bool:
    return STATE_ATTR in model.__dict__


def report(model: nn.Module) -> Report:
    """What optimize() did to `model`."""
    if not is_optimized(model):
        raise ValueError(f"{type(model).__name__} has not been optimised by ferfuse")
    return model.__dict__[STATE_ATTR].report


def attention_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor | None:
    """The spatial attention maps (B×K×H×W) a fused unit of `model` computes for `images` on its
    fused path (DAN's and MACA-Net's heads), or None when no active unit computes any."""
    state = model.__dict__.get(STATE_ATTR)
    for unit in state.units if state is not None else ():
        # a network inside the model (a wrapper's) takes other inputs than `images`: its maps are
        # read off its modules by the caller (pipeline/explain.py)
        if hasattr(unit, "attention_maps") and not unit.owner and unit.active(model):
            return unit.attention_maps(model, images)
    return None


def revert(model: nn.Module) -> nn.Module:
    """Restore the original forward of every module optimize() touched."""
    state = model.__dict__.pop(STATE_ATTR, None)
    if state is not None:
        if state.guard is not None:
            state.guard.uninstall(model)
        for unit in state.units:
            unit.uninstall()
    return model


def _hook_notes(units: list) -> list[str]:
    """A unit whose hidden modules carry forward hooks (a pruned conv's pre-hook, a feature
    extractor's) runs its original modules on every call while they do: the report says which."""
    if global_hooks():
        return ["forward hooks are registered for every module (register_module_forward_hook): every fused "
                "unit runs its original modules while they are"]
    hooked = [f"{unit.pattern} {unit.names()[0]}" for unit in units if unit.hooked()]
    if not hooked:
        return []
    listed = ", ".join(hooked[:3]) + (f" and {len(hooked) - 3} more" if len(hooked) > 3 else "")
    return [f"forward hooks on modules inside {listed}: these units run their original modules, so the hooks "
            "see their calls, while the hooks are registered"]


def _conv_runners(state: EngineState, device: torch.device | None = None) -> list:
    """The folded convolutions of the model's units: on `device`, or with None those folded so far."""
    return [r for unit in state.units for r in unit.conv_runners(device)]


def _unit_tallies(state: EngineState) -> list:
    return [unit.tally() for unit in state.units]


def _live_notes(state: EngineState) -> list[str]:
    """What calls since optimize() changed: a note per unit one of whose modules was replaced
    (FusedUnit.rewired), and whether a call under torch.autocast ran the original forward."""
    notes = [unit.rewired_note(moved) for unit in state.units if (moved := unit.rewired())]
    if state.guard is not None and state.guard.autocast_warned:
        notes.append("calls under torch.autocast ran the original forward (autocast sets each op's precision); "
                     "outside autocast the model runs fused")
    return notes


def _entry(unit: FusedUnit) -> FusedEntry:
    return FusedEntry(unit.pattern, unit.names(), unit.backend)


def optimize(model: nn.Module, *, backend: str = "auto", precision: str = "fp32", verify: bool = True,
             example_inputs=None, strict: bool = False, executor: str = "auto", reuse_memory: bool = True) -> nn.Module:
    """Fuse `model` in place for inference and return it.

    Targets are found by structure (see engine/patterns); parameters stay the truth and folded
    weights are caches. With `verify` (default) the fused path, the original path at the working
    precision and a float64 reference run on the same inputs before this returns: a fused unit
    whose error exceeds its budget (k × the original's own error + a floor) is reverted and
    reported, or raises with `strict=True`. Where several convolution executors may run, the first
    call of each input shape times them and keeps the fastest for that shape. On a CPU model,
    `reuse_memory` raises glibc's malloc thresholds once per process so that activations over
    32 MB are reused from call to call instead of page-faulted afresh (engine/memory.py).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize() takes a torch.nn.Module, got {type(model).__name__}")
    revert(model)
    device = _device_of(model)
    backend = resolve_backend(backend, device)
    dtype, allow_tf32 = resolve_precision(precision, device)
    weight = weight_probe(model)  # the guard's view of the weights' dtype
    if weight is not None and weight.dtype != torch.float32 and precision in ("fp32", "tf32"):
        # the fused path computes in float32 (its C kernels take float*): say so, rather than fail
        # deep inside verification on a float32 example meeting float64 weights
        raise TypeError(f"optimize() takes a float32 model at precision={precision!r}; this one's weights are "
                        f"{weight.dtype}: call model.float() first")
    rep = Report(type(model).__name__, backend, precision, str(device))
    executors = resolve_executors(executor, device, backend, dtype, rep)
    rep.executors = executors
    if reuse_memory and device.type == "cpu":
        rep.notes.append(memory.keep_large_blocks())
    reference = model_copy(model).double().eval() if verify else None
    # reduced precisions: the baseline is the original model run in that precision
    lowp = model_copy(model).to(dtype).eval() if verify and dtype != torch.float32 else None
    # built before anything is swapped: its dry runs use the original forward
    guard = InputGuard(model, device, nonfinite_to_original=any(e in ONEDNN_EXECUTORS for e in executors))
    guard.choice = ExecutorChoice(executors)
    rep.executor_by_shape, rep.executor_timings = guard.choice.by_shape, guard.choice.timings
    rep.executor_retimed = guard.choice.retimed

    units, claimed = [], set()
    for pattern in all_patterns():
        for item in pattern.find(model, claimed, backend=backend, dtype=dtype, allow_tf32=allow_tf32,
                                 executor=executors[0]):
            if isinstance(item, Skip):
                rep.skipped.append(item)
            else:
                units.append(item)
                claimed.update(item.names())
    for unit in units:
        unit.install(model)
        unit.wire(model)
    kept: list[str] = []  # attention left on PyTorch, noted once (not again for a layer's own self_attn)
    for name, module in model.named_modules():
        if isinstance(module, (nn.TransformerEncoderLayer, nn.MultiheadAttention)) and name and \
                not is_claimed(name, claimed) and not any(name.startswith(k + ".") for k in kept):
            kept.append(name)
            rep.notes.append(f"{name} ({type(module).__name__}): stays on PyTorch's fused attention "
                             "(scaled_dot_product_attention), not fused by ferfuse")
    rep.notes += list(dict.fromkeys(n for unit in units for n in unit.notes(executors)))
    rep.notes += _hook_notes(units)
    state = EngineState(units, rep)
    rep.conv_runners = functools.partial(_conv_runners, state)
    rep.unit_tallies = functools.partial(_unit_tallies, state)
    rep.live_notes = functools.partial(_live_notes, state)
    model.__dict__[STATE_ATTR] = state
    if units:
        guard.install(model)  # outermost: checks run before any fused unit launches a kernel
        state.guard = guard
    else:
        warnings.warn(f"ferfuse.optimize: nothing in {type(model).__name__} matched a fusable structure; "
                      f"the model runs unchanged ({len(rep.skipped)} candidates skipped, see report(model))",
                      stacklevel=2)
    entries = {id(u): _entry(u) for u in units}
    if verify and units:
        # verified as called outside autocast, which would run the baseline and the reference in its
        # reduced precision and make every budget meaningless; calls under it run the original
        with _in_eval_mode(model), torch.autocast(device.type, enabled=False):
            _verify(model, reference, lowp, state, entries, example_inputs, device, strict)
    rep.fused = [entries[id(u)] for u in state.units]
    if state.guard is not None and state.guard.nonfinite_to_original:
        spread = "; a Winograd tile spreads NaN over its outputs" if "winograd" in executors else ""
        rep.notes.append("inputs holding NaN or Inf run the original forward (oneDNN's fused ReLU would map "
                         f"NaN to 0{spread}); finite inputs run fused")
    if model.training and state.units:  # a fresh nn.Module is in training mode: easy to forget
        warnings.warn(f"ferfuse.optimize: {type(model).__name__} is in training mode, where it runs its original "
                      "forward (the fused path runs in eval mode only): call .eval() before inference", stacklevel=2)
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


@contextlib.contextmanager
def _in_eval_mode(model: nn.Module):
    """Every module of `model` in eval mode inside, each module's own mode restored after. The
    verification runs the live model (the fused path, and at fp32 the original path's baseline):
    on a model handed over in training mode, as a fresh nn.Module is, it would otherwise compute
    the baseline with batch statistics and overwrite BatchNorm's running statistics."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _over_budget(err: float, baseline: float, precision: str, form: str, logits: bool = False) -> tuple[float, bool]:
    """(the budget, whether `err` exceeds it) for a fused path whose convs run as `form`."""
    allowed = allowed_error(baseline, precision, form, logits)
    return allowed, not err <= allowed


def _verify(model, reference, lowp, state: EngineState, entries, example_inputs, device, strict):
    """Each unit, then the logits, against float64, under every form the executors can take;
    the budget is k × the original path's own error at the working precision + a floor."""
    rep = state.report
    if example_inputs is None:
        example_inputs = default_example_inputs(model, device, state.guard)
        rep.example_source = "random inputs" + ("" if hasattr(model, "input_size") else
                                                " of the first usual FER size the model takes")
    else:
        example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        rep.example_source = "the caller's example_inputs"
    base_model = lowp if lowp is not None else model
    base_dtype = _PRECISIONS[rep.precision]
    ref_inputs = tuple(t.double() if t.is_floating_point() else t for t in example_inputs)
    base_inputs = tuple(t.to(base_dtype) if t.is_floating_point() else t for t in example_inputs)
    rep.example_shape = tuple(example_inputs[0].shape)

    def fail(what: str, why: str):
        if strict:
            revert(model)
            raise RuntimeError(f"ferfuse.optimize(strict=True): {what}: {why}")

    # each unit on the input its first covered module saw in the float64 reference run
    ref_out, seen = capture_inputs(reference, [u.names()[0] for u in state.units], ref_inputs)
    ref_logits = first_tensor(ref_out)
    for unit in list(state.units):
        name = unit.names()[0]
        if name not in seen:
            rep.notes.append(f"{unit.pattern} {name}: not reached by the verification inputs")
            continue
        x64 = seen[name]
        entry = entries[id(unit)]
        unit_forms = verification_forms(state.guard.choice.candidates, unit.conv_runners(device))
        with torch.no_grad():
            expected = first_tensor(unit.reference([reference.get_submodule(n) for n in unit.names()], x64))
            base_modules = [base_model.get_submodule(n) for n in unit.names()]
            with original_path(), working_precision(rep.precision):
                entry.baseline = original_error(lambda t: unit.reference(base_modules, t), (x64.to(base_dtype),),
                                                expected)
            worst = None
            for form in unit_forms:
                with use_executor(form):
                    got = first_tensor(unit.forward(x64.to(example_inputs[0].dtype)))
                abs_err, rel_err = errors(got, expected)
                allowed, over = _over_budget(rel_err, entry.baseline, rep.precision, form)
                if worst is None or rel_err / allowed > worst[1] / worst[2]:
                    worst = (form, rel_err, allowed, abs_err, over)
        entry.form, entry.rel_error, entry.budget, entry.abs_error, over = worst
        if over:
            why = (f"relative error {entry.rel_error:.2e} with convolutions as {entry.form} over its budget "
                   f"{entry.budget:.2e} (original fp path {entry.baseline:.2e})")
            fail(f"{unit.pattern} {', '.join(unit.names())}", why)
            _uninstall_unit(model, state, unit)
            rep.reverted.append((entry, why))

    with torch.no_grad(), original_path(), working_precision(rep.precision):
        rep.logits_baseline = original_error(base_model, base_inputs, ref_logits)
    _, _, top1_min = budget(rep.precision, logits=True)
    rep.logits_rel_error, rep.top1_agreement, rep.logits_budget = 0.0, 1.0, float("inf")
    runners = _conv_runners(state, device)
    # with every unit reverted this measures the plain model: its own error, within its budget
    for form in verification_forms(state.guard.choice.candidates, runners):
        with use_executor(form), torch.no_grad():
            logits = first_tensor(model(*example_inputs))
        rep.verified_forms += (form,)
        abs_err, rel_err = errors(logits, ref_logits)
        allowed, over = _over_budget(rel_err, rep.logits_baseline, rep.precision, form, logits=True)
        agree = top1_agreement(logits, ref_logits)
        if rel_err >= rep.logits_rel_error:
            rep.logits_abs_error, rep.logits_rel_error, rep.logits_form = abs_err, rel_err, form
        rep.logits_budget = min(rep.logits_budget, allowed)
        rep.top1_agreement = min(rep.top1_agreement, agree)
        if over or agree < top1_min:
            why = (f"logits relative error {rel_err:.2e} with convolutions as {form} (budget {allowed:.2e}, "
                   f"original fp path {rep.logits_baseline:.2e}), top-1 agreement {agree:.2%}")
            fail("logits", why)
            for unit in list(state.units):
                _uninstall_unit(model, state, unit)
                rep.reverted.append((entries[id(unit)], why))
            rep.notes.append(f"every fused unit was reverted: {why}; the model runs its original forward")
            break
    rep.verified = True
