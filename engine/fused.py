"""The fused-unit base: covers original modules, derives folded weights as a cache.

A unit never owns parameters: the covered modules' parameters and buffers stay the truth (the
state_dict is unchanged) and the folded weights are rebuilt whenever one of them changes
(`load_state_dict`, an optimizer step, `.to()`), detected by each tensor's identity, version
counter and data pointer. A write through `.data` (`p.data.copy_(w)`) bumps no version counter
and goes unseen: load weights with `load_state_dict` or in place under `torch.no_grad()`. A module
assigned in place of one a unit fused (`model.fc = nn.Linear(...)`, `seq[i] = block`), or a child
added under one (a weight parametrization), is seen too (`rewired`): that unit runs the original
modules as they now are, and says so. Units
install themselves by rebinding `forward` on the live modules (and their display names, so
`print(model)` shows the swap); `uninstall` restores the class's forward.
"""
import contextlib
import functools
import threading
import warnings

import torch
import torch.nn as nn
import torch.nn.modules.module as module_hooks

from .executors import ConvRunner, selected_executor

# Module assignments anywhere (`parent.name = module`, which nn.Sequential's and nn.ModuleList's
# item assignment make too), counted by a global registration hook that changes nothing: a fused
# call reads the count, and a unit looks again at where its modules hang only after it has moved.
_ASSIGNMENTS = [0]


def _count_assignment(module, name, submodule):
    _ASSIGNMENTS[0] += 1


module_hooks.register_module_module_registration_hook(_count_assignment)

_FOLD_LOCK = threading.RLock()  # folded caches are built once, even when threads race to the first call
UNIT_ATTR = "_ferfuse_unit"
_CALL = threading.local()  # per-thread: `original` is set while one call must take the original path


class original_path:
    """Within this context, in this thread only, every fused unit runs its original modules."""

    def __enter__(self):
        self.before = getattr(_CALL, "original", False)
        _CALL.original = True

    def __exit__(self, *exc):
        _CALL.original = self.before


def in_original_path() -> bool:
    return getattr(_CALL, "original", False)


class FusedUnit:
    """One fused structure in a model. Subclasses set `pattern` and implement `fold`, `forward`,
    `reference` and `install`."""

    pattern = "fused"
    # Whether each module this unit installs a forward on returns what its own forward would (a
    # block replaced whole), so that hooks on it see the original's values. conv_bn's do not: its
    # conv returns conv+BN(+activation), and its BN and activation pass that through.
    entries_exact = True

    def __init__(self, covered: dict[str, nn.Module], *, backend: str, dtype: torch.dtype, allow_tf32: bool = False,
                 executor: str = "aten"):
        self.covered = covered  # qualified name -> original module (not registered anywhere)
        self.backend = backend
        # how folded convolutions run where no call selected an executor (engine/executors.py)
        self.executor = executor
        self.dtype = dtype
        self.allow_tf32 = allow_tf32
        self.enabled = True
        self.decomposed = False  # standard aten ops only (ONNX export, FLOP counting): see aten_only
        self._cache = None
        self._installed: list[nn.Module] = []

    def __getstate__(self):
        # deepcopy/pickle: the folded cache is derived (and may hold opaque oneDNN tensors); rebuild it
        state = dict(self.__dict__)
        state["_cache"] = None
        state.pop("_slot_list", None)  # refers to the modules' own tables: listed again after a copy
        state.pop("_hook_list", None)
        state.pop("_wired_at", None)  # a copy looks at its wiring (copied along with the modules) once
        return state

    # -- folded weights: a cache checked against the source tensors' identity and version -------
    def _slots(self) -> list[tuple[dict, str]]:
        """Where each covered tensor that folding reads lives: (a module's _parameters or _buffers,
        name). Read on every call, so a replaced tensor (`.to()`, assignment) is seen; listed once,
        because walking the module tree on every call cost ~0.3 ms per DAN forward. BatchNorm's
        `num_batches_tracked` is left out: it only sets the momentum of training updates, which
        eval folding never reads."""
        slots = self.__dict__.get("_slot_list")
        if slots is None:
            slots = [(table, name) for module in self.covered.values() for m in module.modules()
                     for table in (m._parameters, m._buffers) for name in table if name != "num_batches_tracked"]
            self._slot_list = slots
        return slots

    def _sources(self) -> list[tuple]:
        """Each covered tensor as folding finds it: (its table, name, the tensor, its version, its
        data pointer); None for the last three where the slot is empty."""
        return [(table, name, t, t._version, t.data_ptr()) if (t := table.get(name)) is not None
                else (table, name, None, None, None) for table, name in self._slots()]

    @staticmethod
    def _unchanged(sources: list[tuple]) -> bool:
        """Whether every covered tensor is the one folded, unmodified: the same object in its
        table (not replaced), the same version (no in-place write: load_state_dict, an optimizer
        step) and the same data pointer (no `.data =` swap, which keeps the version). One pass
        that stops at the first change: the check runs before every fused call, and building
        the whole key as a tuple to compare cost HAFEM ~1.2 ms a forward at batch 1 (its 1,000
        tensors' metadata is out of cache between the kernels)."""
        for table, name, t, version, ptr in sources:
            if table.get(name) is not t or t is not None and (t._version != version or t.data_ptr() != ptr):
                return False
        return True

    def _current(self, device: torch.device) -> dict | None:
        """The cached folded weights if they were folded for `device`, in this mode, from the
        covered tensors as they are now; else None."""
        cache = self._cache
        if cache is not None and cache[0] == (device, self.aten_only()) and self._unchanged(cache[2]):
            return cache[1]
        return None

    @torch.compiler.disable
    def folded(self, device: torch.device) -> dict:
        weights = self._current(device)
        if weights is not None:
            return weights
        with _FOLD_LOCK:
            weights = self._current(device)  # another thread may have folded them meanwhile
            if weights is None:
                sources = self._sources()  # before folding: a change made meanwhile is seen next call
                # ordinary tensors even on a call under torch.inference_mode: an inference tensor
                # cannot meet autograd, and a later call with grad enabled runs the heads' autograd
                # form on these weights
                with torch.inference_mode(False), torch.no_grad(), _tracer_paused():
                    # detached: `.to()` of an unchanged parameter returns the parameter itself
                    weights = {k: v.detach() if isinstance(v, torch.Tensor) else v
                               for k, v in self.fold(device).items()}
                self._cache = (device, self.aten_only()), weights, sources
            return weights

    def aten_only(self) -> bool:
        """Whether this call computes with standard aten ops on the folded weights: set for ONNX
        export and FLOP counting (`decomposed`), and whenever torch.jit traces, so that a user's
        `torch.jit.trace` of an optimised model records the folded graph. The C kernels write
        through raw pointers a tracer cannot see (the trace would keep an empty buffer), and
        oneDNN's fused conv takes an argument the tracer refuses."""
        return self.decomposed or torch.jit.is_tracing()

    def fold(self, device: torch.device) -> dict:
        """Derive the fused weights (on `device`) from the covered modules' current tensors."""
        raise NotImplementedError

    def call(self, op, *args):
        """Run the fused op `op` (a kernels registry declaration) on this unit's backend."""
        return op(*args, backend=self.backend, allow_tf32=self.allow_tf32, decomposed=self.aten_only())

    def conv_runners(self, device: torch.device | None) -> list:
        """The folded convolutions (executors.ConvRunner) this unit runs on `device`; with None,
        those folded so far (nothing is folded for the asking)."""
        weights = self.folded(device) if device is not None else (self._cache[1] if self._cache else {})
        found = []
        for value in weights.values():
            found += [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, ConvRunner)]
        return found

    def tally(self) -> dict:
        """{kind: Counter(way: count)}: how this unit's calls ran so far, for the report's tally."""
        return {}

    def notes(self, executors: tuple[str, ...]) -> list[str]:
        """What the report should say about how this unit runs on `executors` (a fallback, say)."""
        return []

    def conv_executor(self) -> str:
        """The executor for this call: set per input shape by the model's guard (use_executor)."""
        return "aten" if self.aten_only() else selected_executor(self.executor)

    # -- installing: rebinding forward on live modules -------------------------------------------
    def run(self, module: nn.Module, x: torch.Tensor):
        """What `module`'s forward returns when this unit is active. A unit installed on a module it
        replaces whole returns `forward(x)`; one installed on a whole model (DAN, MHAN) runs the
        model's trunk first and returns what the model's forward returns."""
        return self.forward(x)

    def install_forward(self, module: nn.Module, display_name: str):
        """Install the fused forward on `module` (see fused_forward)."""
        self.rebind(module, fused_forward, display_name)

    def rebind(self, module: nn.Module, forward=None, display_name: str | None = None):
        self.__dict__.pop("_hook_list", None)  # which modules the fused path hides changes
        module.__dict__[UNIT_ATTR] = self
        if forward is not None:
            module.forward = bind(forward, module)
        if display_name is not None:
            module._get_name = functools.partial(str, display_name)  # what repr() prints for the module
        self._installed.append(module)

    def uninstall(self):
        for module in self._installed:
            for attr in ("forward", "_get_name", UNIT_ATTR):
                module.__dict__.pop(attr, None)
        self._installed.clear()
        self._cache = None
        self.__dict__.pop("_hook_list", None)

    def active(self, module: nn.Module) -> bool:
        """The fused path runs in eval mode only; training (and autograd through the input)
        takes the original modules, and so does a call where a hook must see a module the fused
        path does not call or whose output it changes, and every call after one of the modules it
        fused was replaced or gained or lost a child (`rewired`)."""
        return self.enabled and not module.training and not in_original_path() and not self.hooked() \
            and not self.rewired()

    def wire(self, model: nn.Module):
        """Note where each module this unit fuses hangs in `model` (its parent's `_modules` and
        the name there), each module under it and the names of every such module's children, so
        that an assignment replacing one, or a child added or removed, is seen."""
        wiring, children = [], []
        for name, module in self.covered.items():
            parent, _, attr = name.rpartition(".")
            if name:
                wiring.append(((model.get_submodule(parent) if parent else model)._modules, attr, module, name))
            for qualified, m in module.named_modules(prefix=name):
                children.append((m._modules, tuple(m._modules), qualified))
                wiring += [(m._modules, child_name, child, f"{qualified}.{child_name}" if qualified else child_name)
                           for child_name, child in m._modules.items()]
        self._wiring, self._children = wiring, children
        self._wired_at = _ASSIGNMENTS[0]

    def rewired(self) -> str | None:
        """What changed in the modules this unit fused since optimize(): one replaced by another
        (`model.fc = nn.Linear(...)`), or a child added or removed (a layer appended to a fused
        nn.Sequential; torch.nn.utils.parametrize registering a weight's parametrization, whose
        tensors folding does not follow); None if nothing. The folded weights then no longer
        stand for the modules, so the unit runs the original modules while the change stands (a
        warning says so once, and the report). One comparison while no module anywhere was
        assigned since the last look; then every slot is looked at."""
        count = _ASSIGNMENTS[0]
        if self.__dict__.get("_wired_at") == count:
            return None
        moved = next((f"{name} was replaced" for table, attr, module, name in self.__dict__.get("_wiring", ())
                      if table.get(attr) is not module), None) or \
            next((f"{name or 'the model'} gained or lost a submodule" for table, names, name in
                  self.__dict__.get("_children", ()) if tuple(table) != names), None)
        if moved is None:
            self._wired_at = count
        elif not self.__dict__.get("_rewired_warned"):
            self._rewired_warned = True
            warnings.warn(f"ferfuse: {self.rewired_note(moved)}", stacklevel=3)
        return moved

    def rewired_note(self, moved: str) -> str:
        """What the warning and the report say of a change `rewired` found."""
        return (f"{moved} after optimize(): {self.pattern} {self.names()[0]} runs its original modules; "
                "optimize() the model again to fuse them as they are")

    def hooked(self) -> bool:
        """Whether a forward hook or pre-hook is registered on a module this unit hides (a conv
        inside a fused block, a BatchNorm folded away; a pruned conv's pre-hook that recomputes its
        weight), or for every module (`register_module_forward_hook`). Such a call runs the
        original modules, so each hook sees its module's call with the original's values, where
        the fused path would skip it silently. Not while torch.jit traces the model (ONNX export,
        fvcore's FLOP count, which hooks every module to name its scopes): a trace records what the
        optimised model runs."""
        return (any(self._hook_tables()) or global_hooks()) and not torch.jit.is_tracing()

    def _hook_tables(self) -> list[dict]:
        """The hook tables (`_forward_hooks`, `_forward_pre_hooks`) of every module the fused path
        hides: all under the covered modules but the entries that return their own forward's output.
        Listed once, read on every call: HAFEM's 749 such modules cost ~35 µs a forward (Zen 4)."""
        tables = self.__dict__.get("_hook_list")
        if tables is None:
            exact = {id(m) for m in self._installed if installed_forward(m) is not None} if self.entries_exact else set()
            hidden = {id(m): m for module in self.covered.values() for m in module.modules() if id(m) not in exact}
            tables = [t for m in hidden.values() for t in (m._forward_hooks, m._forward_pre_hooks)]
            self._hook_list = tables
        return tables

    def names(self) -> list[str]:
        return list(self.covered)


@contextlib.contextmanager
def _tracer_paused():
    """torch.jit's tracer off while inside: folding during a trace (`aten_only`) then gives the
    trace constants, the folded graph, rather than recording the fold, which a trace of one fused
    submodule cannot do (its BatchNorm's parameters lie outside the traced module: "Cannot insert
    a Tensor that requires grad as a constant"). torch has no public switch for it: these are the
    calls its tracer's own state goes through."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


def global_hooks() -> bool:
    """Whether forward hooks for every module are registered (each module's call must be seen)."""
    return bool(module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks)


def bind(forward, module: nn.Module) -> functools.partial:
    """`forward` bound to `module`, to install as the module's own `forward`: a functools.partial,
    which pickles by reference to the function (torch.save of a whole optimised model), where a
    method object bound to a function the class does not define pickles but cannot be loaded."""
    return functools.partial(forward, module)


def installed_forward(module: nn.Module):
    """The function `bind` installed as `module`'s forward, or None."""
    forward = module.__dict__.get("forward")
    return forward.func if isinstance(forward, functools.partial) and forward.args and forward.args[0] is module else None


def unit_of(module: nn.Module) -> FusedUnit:
    return module.__dict__[UNIT_ATTR]


def original_forward(module: nn.Module, *args, **kwargs):
    return type(module).forward(module, *args, **kwargs)


def fused_forward(self, x):
    """The forward every unit installs: its fused computation while it is active (eval mode, not
    inside original_path), the module class's own forward otherwise."""
    unit = unit_of(self)
    # an empty batch has nothing to compute: the module's own forward gives eager's empty output
    # (the C kernels size their work from the batch and divide by it)
    return unit.run(self, x) if unit.active(self) and x.numel() else original_forward(self, x)
