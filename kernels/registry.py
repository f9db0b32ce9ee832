"""A fused op is one declaration, `declare(...)`, at the end of its own file under kernels/.

The declaration names the op's parts, all in that file:
- `triton`: the launcher. It checks its inputs, picks block sizes from the file's config table and
  starts every kernel through `launch`. Its signature is the op's schema: typed arguments, then
  `allow_tf32: bool = False`, and optionally `out=None` (left out of the schema).
- `reference`: the same math in plain torch, with the launcher's arguments minus `allow_tf32`. It
  is the op's CPU kernel, the torch backend on every device and the tests' float64 oracle.
- `flops`: multiply-adds from the arguments, by name (tensors as shapes, absent optionals as None);
  bench/flops.py reads it for fvcore.
- `domain`: argument sets, meta tensors included, that make the launcher pick each configuration
  it can pick. kernels/aot.py compiles what the launcher launches on them (`planned_launches`), so
  the ahead-of-time list comes from the launcher's own choices.
- `examples`: edge-shape inputs (batch 1, odd sizes, strided layouts) that the registry's tests
  run on the Triton launcher against the float64 reference.
- `fake` (optional): output shapes for tracing. By default the reference runs on fake tensors.
- `packed` (optional): weight layouts the kernels read faster. The engine stores weights through
  `op.pack(backend, name, tensor)` and never needs to know the layout.

`declare` registers `ferfuse::<name>` with torch.library: the CPU kernel is the reference, the CUDA
kernel is Triton, and fake tensors go through `fake`. It also adds the op to `OPS`, which aot.py,
the FLOP report and the tests iterate, so none of them can miss a new op. `FusedOp.__call__` is the
one dispatch between the reference, Triton and the registered op.
"""
import contextlib
import inspect
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import triton.language as tl
from torch import Tensor

from .compat import triton_runs_on

OPS: dict[str, "FusedOp"] = {}
NAMESPACE = "ferfuse"
_PLAN = threading.local()  # set while planned_launches records launches instead of running them


@dataclass(frozen=True)
class Launch:
    """One kernel configuration: what triton.compile needs to build it ahead of time."""
    kernel: str
    fn: object  # the @triton.jit function
    signature: tuple  # ((argument, type), ...): "*fp32", "i32", "fp32" or "constexpr"
    constexprs: tuple  # ((name, value), ...)
    options: tuple  # (("num_warps", n), ("num_stages", s))

    def key(self):
        return self.kernel, self.signature, self.constexprs, self.options


_POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64",
            torch.int32: "*i32", torch.int64: "*i64"}


def _arg_type(value) -> str:
    if isinstance(value, Tensor):
        return _POINTER[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"launch: cannot pass a {type(value).__name__} to a kernel")


def _parameters(kernel):
    """(name, is constexpr) for each parameter of a @triton.jit function, compiled or interpreted."""
    for p in inspect.signature(kernel.fn).parameters.values():
        yield p.name, p.annotation is tl.constexpr or p.annotation in ("tl.constexpr", "constexpr")


def launch(kernel, grid, *args, num_warps: int = 4, num_stages: int | None = None, **constexprs):
    """Start `kernel` on `grid`; every launcher goes through here. Inside `planned_launches` the
    configuration is recorded instead, so the AOT list is derived from the launchers."""
    plan = getattr(_PLAN, "launches", None)
    if plan is not None:
        values = iter(args)
        signature = tuple((name, "constexpr" if is_constexpr else _arg_type(next(values)))
                          for name, is_constexpr in _parameters(kernel))
        options = (("num_warps", num_warps),) + ((("num_stages", num_stages),) if num_stages is not None else ())
        plan.append(Launch(kernel.fn.__name__, kernel, signature, tuple(sorted(constexprs.items())), options))
        return
    extra = {"num_stages": num_stages} if num_stages is not None else {}
    kernel[grid](*args, num_warps=num_warps, **extra, **constexprs)


@contextlib.contextmanager
def _recording(launches: list):
    before = getattr(_PLAN, "launches", None)
    _PLAN.launches = launches
    try:
        yield
    finally:
        _PLAN.launches = before


@dataclass(eq=False)
class FusedOp:
    name: str
    triton: Callable
    reference: Callable
    flops: Callable[..., int]
    domain: Callable[[], Iterable[tuple]]
    examples: Callable[[torch.Generator], list[tuple[str, tuple]]]
    fake: Callable | None = None
    packed: dict[str, Callable] = field(default_factory=dict)
    op: object = field(init=False, repr=False)  # the torch.library custom op

    def __post_init__(self):
        params = [p for n, p in inspect.signature(self.triton).parameters.items() if n != "out"]
        if not params or params[-1].name != "allow_tf32":
            raise TypeError(f"{self.name}: the launcher's last schema argument must be `allow_tf32: bool = False`")
        self.arg_names = [p.name for p in params[:-1]]

        def prototype(*args, **kwargs):
            raise NotImplementedError

        prototype.__signature__ = inspect.signature(self.triton).replace(parameters=params)
        schema = torch.library.infer_schema(prototype, mutates_args=())
        reference, launcher, fake = self.reference, self.triton, self.fake or self.reference

        def cpu_kernel(*args, allow_tf32=False):
            return reference(*args)

        self.op = torch.library.custom_op(f"{NAMESPACE}::{self.name}", cpu_kernel, mutates_args=(), schema=schema)
        self.op.register_kernel("cuda")(lambda *args, allow_tf32=False: launcher(*args, allow_tf32=allow_tf32))
        self.op.register_fake(lambda *args, allow_tf32=False: fake(*args))

    @property
    def qualname(self) -> str:
        return f"{NAMESPACE}::{self.name}"

    def __call__(self, *args, backend: str, allow_tf32: bool = False, decomposed: bool = False):
        """Run the op the way `backend` asks; the one place this choice is made.

        - `decomposed` (ONNX export, FLOP counting of plain aten ops) and the torch backend run the
          reference. One exception: CPU traces and torch.compile see the registered op itself,
          whose CPU kernel is that same reference. Eager CPU calls skip the custom-op
          dispatcher, which costs about 150 µs a call.
        - The triton backend calls the launcher directly on CPU tensors, where the Triton
          interpreter runs the kernels. On CUDA it goes through the registered op, so traces see
          it.
        """
        x = next(a for a in args if isinstance(a, Tensor))
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if decomposed or (backend == "torch" and (x.device.type != "cpu" or not tracing)):
            return self.reference(*args)
        if backend == "triton":
            if not triton_runs_on(x.device):
                raise RuntimeError(f"{self.name}: the triton backend cannot run on {x.device} tensors here "
                                   "(CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)")
            if x.device.type == "cpu":
                return self.triton(*args, allow_tf32=allow_tf32)
        return self.op(*args, allow_tf32=allow_tf32)

    def pack(self, backend: str, name: str, tensor: Tensor) -> Tensor:
        """`tensor` stored as the kernels read it best on `backend` (unchanged for the reference)."""
        return self.packed[name](tensor) if backend == "triton" and name in self.packed else tensor

    def planned_launches(self, *args, allow_tf32: bool = False) -> list[Launch]:
        """The kernel configurations the launcher picks for these arguments (meta tensors will do),
        recorded instead of launched."""
        launches: list[Launch] = []
        with _recording(launches):
            self.triton(*args, allow_tf32=allow_tf32)
        return launches

    def configurations(self) -> list[Launch]:
        """Every configuration the launcher picks over `domain`, each once: the AOT list."""
        seen = {}
        for args, allow_tf32 in self.domain():
            for item in self.planned_launches(*args, allow_tf32=allow_tf32):
                seen.setdefault(item.key(), item)
        return list(seen.values())

    def count_flops(self, values: dict) -> int:
        """Multiply-adds for argument values by name: shapes for tensors, None for absent optionals."""
        return int(self.flops(**{n: values.get(n) for n in self.arg_names}))


def declare(name: str, **parts) -> FusedOp:
    """Declare the fused op `name` (see the module docstring) and add it to the registry."""
    if name in OPS:
        raise ValueError(f"a fused op named {name!r} is already declared")
    op = FusedOp(name, **parts)
    OPS[name] = op
    return op


def ops() -> list[FusedOp]:
    """Every declared op: each module of this package is imported, so a new op file is found
    without being listed anywhere."""
    import importlib
    import pkgutil

    from . import __path__ as package_path
    for module in pkgutil.iter_modules(package_path):
        if module.name != "aot":  # the AOT command line: it runs as __main__ and declares nothing
            importlib.import_module(f"{__package__}.{module.name}")
    return list(OPS.values())
