"""Input checks in front of an optimised model: a clear ValueError/TypeError naming what was
expected and what came, raised before any kernel launches.

Expectations come from the model's own structure: channels from its first convolution (or the
heads' channels when the trunk has none), the device and dtype family from its weights, and the
spatial sizes it can take from a shape-only run of the original forward on the `meta` device
(cached per input shape, so each new shape costs one dry run). The same dry run finds an input
size for a model that names none (`input_size`), and the guard selects, per input shape, the
convolution executor its `ExecutorChoice` timed fastest."""
import contextlib
import copy
import time
import types
import warnings

import torch
import torch.nn as nn

from .executors import ExecutorChoice, selected_executor, use_executor
from .fused import bind, in_original_path, original_path

GUARD_ATTR = "_ferfuse_guard"
PROBE_SIZES = (224, 112, 100, 96, 48)  # the usual FER input sizes, tried in this order


def weight_probe(model: nn.Module) -> torch.Tensor | None:
    """One live floating-point parameter of `model`, whose dtype is the model's weights' (None: it has none)."""
    return next((p for p in model.parameters() if p.is_floating_point()), None)


def model_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` (optimize() verifies against copies of it), or an error that says
    what to do where torch cannot copy it: a pruned or old-style weight-normed module holds its
    weight as a tensor its forward pre-hook computed with autograd, which deepcopy refuses."""
    try:
        return copy.deepcopy(model)
    except RuntimeError as e:
        if "deepcopy protocol" not in str(e):
            raise
        raise RuntimeError("optimize() copies the model to verify against it, and torch cannot copy this one: a "
                           "tensor attribute was computed with autograd (torch.nn.utils.prune or weight_norm compute "
                           "a module's weight so in their forward pre-hook). Run one forward under torch.no_grad() "
                           "first, or make the pruning permanent (prune.remove) or use "
                           "torch.nn.utils.parametrizations; then call optimize()") from e


class InputGuard:
    def __init__(self, model: nn.Module, device: torch.device, nonfinite_to_original: bool = False):
        first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
        self.channels = first.in_channels if isinstance(first, nn.Conv2d) else None
        self.device = device
        # one live parameter: `.to()` updates it in place, so a moved model is noticed
        self.probe = weight_probe(model)
        self.dtype = self.probe.dtype if self.probe is not None else torch.float32
        # the original forward, shapes only, in eval mode: the guard checks eval-mode calls, and a
        # model handed over in training mode (as every fresh nn.Module is) would fail the batch-1
        # dry run in a BatchNorm1d ("Expected more than 1 value per channel when training")
        self.meta = model_copy(model).to("meta").eval()
        self.known_shapes: set[tuple] = set()
        self.previous_forward = None
        # oneDNN's fused ReLU maps NaN to 0: such inputs take the original path to propagate exactly
        self.nonfinite_to_original = nonfinite_to_original
        self.choice: ExecutorChoice | None = None  # the convolution executor per input shape
        self.autocast_warned = False

    def dry_run(self, shape: tuple):
        """Raise a ValueError naming the size when an input of `shape` (C×H×W) cannot pass through
        the original forward; shapes that passed are remembered."""
        if shape in self.known_shapes:
            return
        try:
            with torch.no_grad():
                self.meta(torch.empty((1, *shape), device="meta", dtype=self.dtype))
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"an input of spatial size {shape[1]}×{shape[2]} cannot pass through "
                             f"{type(self.meta).__name__}: {str(err).splitlines()[0]}") from None
        self.known_shapes.add(shape)

    def input_size(self) -> tuple[int, int, int]:
        """C×H×W of the first of PROBE_SIZES that the model takes, for a model that names no `input_size`."""
        tried = []
        for size in PROBE_SIZES:
            shape = (self.channels or 3, size, size)
            try:
                self.dry_run(shape)
                return shape
            except ValueError as err:
                tried.append(f"{size}×{size} ({str(err).split(': ', 1)[-1]})")
        raise ValueError(f"{type(self.meta).__name__} has no `input_size` and takes none of the usual FER sizes: "
                         f"pass example_inputs=(a batch the model accepts,) to optimize(); tried "
                         + "; ".join(tried))

    @torch.compiler.disable
    def warn_autocast(self, model_name: str):
        if not self.autocast_warned:
            self.autocast_warned = True
            warnings.warn(f"ferfuse: torch.autocast is enabled, so {model_name} runs its original forward (the fused "
                          "path computes at optimize()'s precision, not per op as autocast sets it); call it outside "
                          "autocast to run fused", stacklevel=4)

    @torch.compiler.disable
    def check(self, x):
        if self.probe is not None and (self.probe.device != self.device or self.probe.dtype != self.dtype):
            raise RuntimeError(f"the model moved from {self.device} {self.dtype} to {self.probe.device} "
                               f"{self.probe.dtype} after optimize(): call optimize() again to rebuild the fused path")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected an image batch tensor B×{self.channels or 'C'}×H×W, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D image batch B×{self.channels or 'C'}×H×W, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point image batch (float32, float16, bfloat16), got {x.dtype}")
        if x.dtype != self.dtype:
            raise TypeError(f"expected {self.dtype} input (the dtype of the model's weights), got {x.dtype}")
        if self.channels is not None and x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} input channels (the model's first convolution), "
                             f"got {x.shape[1]} in shape {tuple(x.shape)}")
        if x.device != self.device:
            raise ValueError(f"the model's weights are on {self.device}, the input is on {x.device}")
        self.dry_run(tuple(x.shape[1:]))

    def install(self, model: nn.Module):
        self.previous_forward = model.__dict__.get("forward")
        model.__dict__[GUARD_ATTR] = self
        model.forward = bind(_guarded_forward, model)
        # torch.jit.script calls this before it compiles a module (an instance attribute serves)
        model.__dict__[SCRIPT_HOOK] = bind(_refuse_script, model)

    def uninstall(self, model: nn.Module):
        model.__dict__.pop(GUARD_ATTR, None)
        model.__dict__.pop(SCRIPT_HOOK, None)
        model.__dict__.pop("forward", None)
        if self.previous_forward is not None:
            model.forward = self.previous_forward


def _guarded_forward(self, x, *args, **kwargs):
    guard = self.__dict__[GUARD_ATTR]
    # on CPU the fused units are C kernels a compiler cannot see into: torch.compile over the model
    # broke its graph at every unit and recompiled per unit until dynamo's limit (DAN 1.26× and
    # HAFEM 1.28× slower than the optimised model uncompiled), so the forward runs as it is
    if guard.device.type == "cpu" and torch.compiler.is_compiling():
        if torch.compiler.is_dynamo_compiling():
            return _uncompiled_forward(self, x, *args, **kwargs)
        # torch.export's non-strict trace: compiling, without dynamo
        raise RuntimeError(f"torch.export cannot trace an optimised {type(self).__name__} on CPU: its fused units "
                           "are C kernels that take real tensors. Export the model before optimize(), or its folded "
                           "graph with ferfuse.engine.export_onnx(model, path)")
    inner = guard.previous_forward or types.MethodType(type(self).forward, self)
    if not self.training and not torch.jit.is_tracing():  # a trace (ONNX export) records no checks
        guard.check(x)
        # the whole original forward for an empty batch (a frame without faces: eager's empty
        # outputs, or its error) and for an input autograd must differentiate through (a saliency
        # map: the fused kernels have no backward). Not for grad-enabled calls on an input that
        # needs no gradient: a script without no_grad() keeps the fused path, as units downstream
        # of a layer with trainable weights would otherwise all see inputs requiring grad
        if not x.numel() or (x.requires_grad and torch.is_grad_enabled()):
            with original_path():
                return inner(x, *args, **kwargs)
        # under torch.autocast each op picks its own reduced precision: the fused units compute at
        # optimize()'s precision, and maps from the aten ops between them would reach them in
        # autocast's dtype (a bfloat16 residual into a float32 oneDNN conv raised, HAFEM). The
        # original forward runs under it, as it would without ferfuse, and a warning says so once
        if torch.is_autocast_enabled(x.device.type):
            guard.warn_autocast(type(self).__name__)
            with original_path():
                return inner(x, *args, **kwargs)
        # one reduction: any NaN or ±Inf makes the sum non-finite (an overflowing finite sum merely
        # takes the exact original path too)
        if guard.nonfinite_to_original and not bool(torch.isfinite(x.sum())):
            with original_path():
                return inner(x, *args, **kwargs)
        if guard.choice is not None and selected_executor() is None and not in_original_path() \
                and not torch.compiler.is_compiling():
            executor = guard.choice.for_input(x, lambda t: _timing_run(self, inner, t, *args, **kwargs))
            t0 = time.perf_counter()
            with use_executor(executor):
                out = inner(x, *args, **kwargs)
            guard.choice.observe(tuple(x.shape), (time.perf_counter() - t0) * 1e3)
            return out
    return inner(x, *args, **kwargs)


_uncompiled_forward = torch.compiler.disable(_guarded_forward)

SCRIPT_HOOK = "__prepare_scriptable__"


def _refuse_script(self):
    """torch.jit.script of an optimised model: TorchScript compiles Python source, and the fused
    units' forwards are Python around kernels it cannot compile (without this, an AttributeError
    about functools.partial from deep inside the scripting)."""
    raise RuntimeError(f"torch.jit.script cannot compile an optimised {type(self).__name__}: its fused units are "
                       "Python around C or Triton kernels. torch.jit.trace(model, example) records its folded graph "
                       "(standard aten ops on the folded weights); or script the model before optimize()")


def _timing_run(model: nn.Module, fn, *args, **kwargs):
    """One of the runs that time the executors on a shape's first call: no autograd, and the
    model's module hooks held back, since these runs are not calls of the user's (a feature
    extractor's hook would collect one output per run). Hooks registered for every module stay."""
    with torch.no_grad(), _hooks_held(model):
        return fn(*args, **kwargs)


@contextlib.contextmanager
def _hooks_held(model: nn.Module):
    """The forward hooks and pre-hooks of `model`'s modules emptied for the duration, in place
    (fused units keep their references to the tables), and put back after."""
    held = [(t, dict(t)) for m in model.modules() for t in (m._forward_hooks, m._forward_pre_hooks) if t]
    for table, _ in held:
        table.clear()
    try:
        yield
    finally:
        for table, hooks in held:
            table.update(hooks)
