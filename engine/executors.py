"""How a folded convolution runs, chosen per call and measured on the CPU in hand:

- `aten`: F.conv2d (cuDNN on GPU, any device, traceable);
- `onednn` (CPU): weights prepacked into oneDNN's blocked layout for each input shape,
  activations channels_last, bias + ReLU and the residual add fused into the convolution, as
  inductor's CPU freezing does;
- `winograd` (CPU): `onednn`, except that each dense stride-1 3×3 convolution runs as Winograd
  F(4×4, 3×3), F(2×2, 3×3) or direct (engine/winograd.py), each stride-1 1×1 convolution as
  ferfuse's own GEMM or oneDNN's (engine/pointwise.py), and each depthwise convolution on
  ferfuse's register-blocked C loops or oneDNN's (engine/depthwise.py), whichever its first call at
  an input shape timed fastest (a Winograd tile's GEMMs, too, run on whichever of the two timed
  faster).

A fused model holds one `ConvRunner` per folded convolution; which executor a call uses is set
by the model's guard for that call (`use_executor`), from an `ExecutorChoice` that times the
candidates on the first call of every input shape (the batch rounded up to a power of two,
`timing_shape`): cuDNN's benchmark mode, TensorRT's optimisation profiles. No rule measured on one
instruction set decides it for another (AVX2 and AVX-512 pack, tile and fuse differently:
engine.md)."""
import threading
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import depthwise, pointwise, winograd

EXECUTORS = ("aten", "onednn", "winograd")
# the CPU executors: oneDNN prepacked convs with fused epilogues (Winograd on top of oneDNN)
ONEDNN_EXECUTORS = ("onednn", "winograd")
# what verification runs so that every form a tuned conv can take at any shape is checked: the
# executor name with its (form, Winograd GEMM engine) forced on every conv that can take it (direct
# is `onednn`): a Winograd tile on either GEMM for 3×3 convs, ferfuse's GEMM for 1×1 convs, the C
# loops for depthwise convs, and "c": both of those at once (ferfuse's C form of each conv that has
# one, so an MBConv block runs as its one C call, engine/mobile.py)
FORCED_FORM = {"winograd-f4": (4, "onednn"), "winograd-f4-gemm": (4, "gemm"), "winograd-f2": (2, "onednn"),
               "winograd-f2-gemm": (2, "gemm"), "pointwise": ("gemm", None), "depthwise": ("depthwise", None),
               "ferfuse-c": ("c", None)}
C_FORMS = ("gemm", "depthwise")  # the forms "c" stands for
TIMED_RUNS = 2  # timed calls per candidate after an untimed one (which packs); the fastest counts

_SELECTED = threading.local()
# the form (a Winograd tile, "gemm", or None: oneDNN direct) per convolution geometry, input shape,
# epilogue and thread count: what the timing depends on (never the weights), so equal convs share
# one timing and a reload keeps the choices
FORM_BY_PROBLEM: dict[tuple, int | str | None] = {}
_FORM_LOCK = threading.Lock()


class use_executor:
    """Within this context, in this thread, folded convolutions run on `executor`."""

    def __init__(self, executor: str):
        self.executor = executor

    def __enter__(self):
        self.before = getattr(_SELECTED, "executor", None)
        _SELECTED.executor = self.executor

    def __exit__(self, *exc):
        _SELECTED.executor = self.before


def selected_executor(default: str | None = None) -> str | None:
    """The executor set by `use_executor` in this thread, else `default`."""
    return getattr(_SELECTED, "executor", None) or default


def verification_forms(candidates: tuple[str, ...], runners=None) -> tuple[str, ...]:
    """Every numerically distinct way `candidates` can run a convolution: a tuned conv may be
    direct, F(4×4) or F(2×2) (3×3), or ferfuse's GEMM (1×1) at some shape, so all are verified.
    Given the `runners` of one unit, a forced form counts only where one of them can take it, and
    "ferfuse-c" only where both C forms have a taker (else it is "pointwise" or "depthwise" again)."""
    forms = []
    for executor in candidates:
        forms += ["onednn", *FORCED_FORM] if executor == "winograd" else [executor]

    def taken(form):
        if form == "ferfuse-c":
            return all(any(r.can_take(c) for r in runners) for c in C_FORMS)
        return any(r.can_take(*FORCED_FORM[form]) for r in runners)

    if runners is not None:
        forms = [f for f in forms if f not in FORCED_FORM or taken(f)]
    return tuple(dict.fromkeys(forms))


def once(cache: dict, key, lock: threading.Lock, make):
    """`cache[key]`, made by `make()` the first time, under `lock` so racing threads time it once."""
    if key in cache:
        return cache[key]
    with lock:
        if key not in cache:
            cache[key] = make()
        return cache[key]


def fastest(candidates, run, runs: int = TIMED_RUNS) -> tuple[object, dict]:
    """Time `run(candidate)` for each candidate (one untimed call first: it packs and warms) and
    return (the fastest, {candidate: ms}). The timed calls alternate between the candidates, best of
    `runs` each: on a shared machine a burst of load then slows every candidate's round alike,
    where timing one candidate after the other once let a burst pick the slower executor for good
    (HAFEM at batch 1 ran on aten at 190 ms after its first call, against 80 ms on oneDNN)."""
    for candidate in candidates:
        run(candidate)
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(runs):
        for candidate in candidates:
            t0 = time.perf_counter()
            run(candidate)
            best[candidate] = min(best[candidate], time.perf_counter() - t0)
    timings = {candidate: seconds * 1e3 for candidate, seconds in best.items()}
    return min(timings, key=timings.get), timings


# A choice is checked once against the calls it then serves: after RECHECK_AFTER calls of a shape,
# if the fastest of them took over RECHECK_MARGIN × the time the losing executor was timed at, a
# burst of load on the machine during the first call's timing picked the slower executor
# (HAFEM at batch 1 on this 2-core machine: aten at 95 ms kept against the winograd executor's
# ~70), and the shape is timed again on its next call.
RECHECK_AFTER = 8
RECHECK_MARGIN = 1.25


def timing_shape(shape) -> tuple:
    """The input shape a timed choice (executor, a conv's form, a Winograd GEMM's engine) is kept
    for: the batch rounded up to a power of two, so batches 5 to 8 share the choice the first of
    them timed. Each timing runs the forward or conv about three times per candidate, so a stream
    of ragged batch sizes (a dynamic-batching server, the last batch of a dataset) paid it for every
    size: DAN at batch sizes 1 to 16 in turn spent 51.2 s in first calls on the 2-core Zen 4 (10.3 s
    so), against 2.2-2.7 s for the same 16 calls after. Batches within a factor of two are one
    regime for these choices; the weights are still packed per exact shape (`pack_for_shape`)."""
    n = shape[0]
    return (1 << max(0, n - 1).bit_length(), *shape[1:])


def shape_key(shape) -> tuple:
    """What every timed choice (the executor, a conv's form, a Winograd GEMM's engine) is kept per,
    beside its problem's geometry: the input shape (`timing_shape`) and the thread count the call
    runs at (a model optimised at 2 threads and then served at 1 meets different bests: each is
    timed)."""
    return timing_shape(shape), torch.get_num_threads()


class ExecutorChoice:
    """Per input shape and thread count (`shape_key`), the fastest of `candidates`, timed on the
    first call of that shape (a call in flight for another shape waits for the timing) and checked
    once against the calls that follow (`observe`). `by_shape`, `timings` and `retimed` are read by
    the report."""

    def __init__(self, candidates: tuple[str, ...]):
        self.candidates = candidates
        self.by_shape: dict[tuple, str] = {}  # shape_key -> executor
        self.timings: dict[tuple, dict[str, float]] = {}
        self.retimed: dict[tuple, str] = {}  # shape_key -> why it was timed again
        self._observed: dict[tuple, list[float]] = {}  # shape_key -> ms of the calls since its timing
        self._lock = threading.Lock()

    def __getstate__(self):  # deepcopy/pickle of an optimised model: the lock is not state
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        # a copy (torch.save then torch.load, perhaps on another CPU; deepcopy) times each shape
        # again on its first call there: the choices belong to the machine that timed them. Cleared
        # in place: the report holds these same dicts.
        for table in (self.by_shape, self.timings, self.retimed, self._observed):
            table.clear()

    @torch.compiler.disable
    def for_input(self, x: torch.Tensor, forward) -> str:
        """The executor for `x`'s shape; `forward(x)` runs the model (no grad) under the selected one."""
        def run(executor):
            with use_executor(executor):
                forward(x)

        def choose():
            if len(self.candidates) == 1:
                return self.candidates[0]
            best, self.timings[key] = fastest(self.candidates, run)
            self._observed[key] = []
            return best

        key = shape_key(x.shape)
        return once(self.by_shape, key, self._lock, choose)

    def observe(self, shape: tuple, ms: float):
        """One call of `shape` (at this thread count) on its chosen executor took `ms`; the
        RECHECK_AFTER-th decides."""
        key = shape_key(shape)
        seen = self._observed.get(key)
        if seen is None or key in self.retimed:  # not timed (one candidate), or checked already
            return
        seen.append(ms)
        # checked once (a racing call may have taken it): a shape that still loses on re-timing stays
        if len(seen) < RECHECK_AFTER or self._observed.pop(key, None) is None:
            return
        chosen, timed = self.by_shape.get(key), self.timings.get(key, {})
        losers = {k: v for k, v in timed.items() if k != chosen}
        if chosen is None or not losers:
            return
        loser = min(losers, key=losers.get)
        if min(seen) > RECHECK_MARGIN * losers[loser]:
            self.retimed[key] = (f"timed again: its {len(seen)} calls on {chosen} took at best {min(seen):.1f} ms, "
                                 f"against {losers[loser]:.1f} ms timed on {loser}")
            with self._lock:
                self.by_shape.pop(key, None)


def onednn_available() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._convolution_pointwise  # noqa: B018 - probe the op's presence
    except (AttributeError, RuntimeError):
        return False
    return True


PACKED_SHAPES = 8  # packings kept per weight (one per input shape seen, the oldest dropped first)


def pack_for_shape(cache: dict, shape: tuple, pack) -> torch.Tensor:
    """`cache[shape]`, made by `pack()` on first use; at most PACKED_SHAPES shapes are kept, so a
    stream of ever-new batch sizes costs repacking, not unbounded memory."""
    packed = cache.get(shape)
    if packed is None:
        with torch.inference_mode(False):  # kept past this call: an ordinary tensor (fused.py folded)
            packed = pack()
        while len(cache) >= PACKED_SHAPES:
            cache.pop(next(iter(cache)), None)  # a racing thread may have dropped it already
        cache[shape] = packed  # a racing thread packs an equal tensor: harmless
    return packed


# how the report names the tuned forms
FORM_NAMES = {None: "oneDNN direct", 4: "Winograd F(4×4)", 2: "Winograd F(2×2)", "gemm": "ferfuse GEMM",
              "depthwise": "ferfuse depthwise"}
GEMM_ENGINE_NAMES = {"onednn": "oneDNN", "gemm": "ferfuse GEMM"}

# activations a folded conv can apply in its epilogue: torch function and oneDNN's post-op name
ACTIVATIONS = {"relu": (torch.relu, "relu"), "sigmoid": (torch.sigmoid, "sigmoid"), "silu": (F.silu, "swish")}


class ConvRunner:
    """A folded conv; `run(x, act=None, residual=None, executor=...)` computes
    act(conv(x) + residual), `act` one of ACTIVATIONS, on any of EXECUTORS (or FORCED_FORM)."""

    def __init__(self, weight, bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups, self.bias, self.weight = groups, bias, weight
        self._packed: dict[tuple, torch.Tensor] = {}
        # grouped convs too where every group is a GEMM of at least one 16-channel panel each way
        # (DAN's and MACA-Net's merged head convs: 4 groups of 256 → 512 channels on 7×7), not a
        # depthwise or narrow-group conv, whose tiny GEMMs the timing would only reject
        self.winograd_eligible = winograd.eligible(weight, stride, padding, dilation) and \
            (groups == 1 or min(weight.shape[0] // groups, weight.shape[1]) >= pointwise.NR)
        self._winograd: dict[int, winograd.WinogradConv] = {}  # per tile size, built on first use
        self.pointwise_eligible = pointwise.eligible(weight, stride, padding, dilation, groups)
        self._gemm: pointwise.PointwiseConv | None = None  # packed on first use
        self.depthwise_eligible = depthwise.eligible(weight, stride, padding, dilation, groups)
        self._depthwise: depthwise.MixedDepthwise | None = None  # its tap table, made on first use
        self.chosen: dict[tuple, int | str | None] = {}  # input shape -> tuned form, for the report
        self._plans: dict[tuple, tuple] = {}  # call signature -> (form, engine): `run`

    def __getstate__(self):
        # a copy packs and tunes again on its first calls: oneDNN's packed layout and the timed
        # forms belong to the CPU they were made on (AVX2 and AVX-512 pack differently), and the
        # packs are caches of `weight` that would only swell a saved model
        state = dict(self.__dict__)
        state.update(_packed={}, _winograd={}, _gemm=None, _depthwise=None, chosen={}, _plans={})
        return state

    @classmethod
    def like(cls, conv: nn.Conv2d, weight, bias) -> "ConvRunner":
        """A runner with `conv`'s hyper-parameters (zero padding given as numbers)."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"{conv}: only numeric zero padding is folded")
        return cls(weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def packed(self, shape: torch.Size) -> torch.Tensor:
        """The weight in oneDNN's blocked layout for inputs of exactly this shape, batch included:
        oneDNN picks the layout per problem, and a weight packed for another one is reordered on
        every call (ONEDNN_VERBOSE on AVX2: packed for batch 1, a batch-2 call reorders each
        128×128×3×3 weight from Acdb16a to Acdb24a, 5 ms a call; engine.md)."""
        return pack_for_shape(self._packed, tuple(shape), lambda: torch._C._nn.mkldnn_reorder_conv2d_weight(
            self.weight.contiguous().to_mkldnn(), self.padding, self.stride, self.dilation, self.groups, list(shape)))

    def winograd(self, tile: int) -> winograd.WinogradConv:
        conv = self._winograd.get(tile)
        if conv is None:  # a racing thread builds an equal one: harmless
            conv = self._winograd[tile] = winograd.WinogradConv(self.weight, self.bias, self.groups, tile)
        return conv

    def winograd_engines(self) -> list[str]:
        """The engines its Winograd tiles' GEMMs were timed onto, one per tile and input shape."""
        return [engine for conv in list(self._winograd.values()) for engine in list(conv.engines.values())]

    def gemm(self) -> pointwise.PointwiseConv:
        if self._gemm is None:  # a racing thread packs an equal one: harmless
            self._gemm = pointwise.PointwiseConv(self.weight, self.bias)
        return self._gemm

    def depthwise(self) -> depthwise.MixedDepthwise:
        if self._depthwise is None:  # a racing thread builds an equal one: harmless
            self._depthwise = depthwise.MixedDepthwise([self.weight], self.bias, self.stride[0])
        return self._depthwise

    def can_take(self, form, engine: str | None = None) -> bool:
        """Whether this conv can run as `form` (a Winograd tile, its GEMMs on `engine`, "gemm" or
        "depthwise") for some epilogue."""
        if form == "depthwise":
            return self.depthwise_eligible and depthwise.LIBRARY.unavailable_reason() is None
        if form == "c":
            return any(self.can_take(f) for f in C_FORMS)
        gemm_built = pointwise.unavailable_reason() is None
        if form == "gemm":
            return self.pointwise_eligible and gemm_built
        return self.winograd_eligible and (engine != "gemm" or gemm_built)

    def forms(self, act, residual=None) -> tuple:
        """The forms a tuned call with epilogue `act` chooses from (None: oneDNN direct), or ()."""
        if self.winograd_eligible and act in (None, "relu"):
            return (None, 4, 2)
        if act in pointwise.ACT_CODES and self.can_take("gemm"):
            return (None, "gemm")
        # the C loops apply the activation, not a residual add before it
        if residual is None and (act is None or act in depthwise.ACTIVATIONS) and self.can_take("depthwise"):
            return (None, "depthwise")
        return ()

    def run(self, x, act: str | None = None, residual=None, executor: str = "aten", scratch_slot: int | None = None):
        """act(conv(x) + residual) on `executor`. ferfuse's C forms write into this thread's scratch
        map `scratch_slot` (scratch.py) where given, the others allocate: the result is what returns."""
        if executor == "aten":
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            if residual is not None:
                y = y + residual
            return ACTIVATIONS[act][0](y) if act else y
        # the form per call signature, looked up first: a HAFEM forward makes ~115 of these calls,
        # and resolving each anew (forms, the problem key, the timed choice) cost ~4 µs a call
        key = (executor, x.shape, act, residual is not None, torch.get_num_threads())
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self.plan(x, act, residual, executor)
        return self.run_form(*plan, x, act, residual, scratch_slot)

    def plan(self, x, act, residual, executor: str) -> tuple:
        """(form, Winograd GEMM engine) for a call on `executor` (form None: oneDNN direct)."""
        forms = self.forms(act, residual) if executor != "onednn" else ()
        if forms:  # a forced form this conv cannot take runs direct
            form, engine = FORCED_FORM.get(executor) or (self.tuned_form(x, act, residual, forms), None)
            if form == "c":
                form = next((f for f in C_FORMS if f in forms), None)
            if form in forms:
                return form, engine
        return None, None

    def planned(self, shape: tuple, act, has_residual: bool, executor: str) -> tuple | None:
        """The (form, engine) `run` keeps for this call signature; None before its first call."""
        return self._plans.get((executor, shape, act, has_residual, torch.get_num_threads()))

    def run_form(self, form, engine, x, act, residual, scratch_slot: int | None = None):
        """`form` (None: direct); a Winograd tile's GEMMs on `engine`, None: the one timed fastest."""
        if form is None:
            return self.direct(x, act, residual)
        if form == "gemm":
            return self.gemm().run(x, act, residual, scratch_slot)
        if form == "depthwise":
            return self.depthwise().run_c(x, act, scratch_slot)
        return self.winograd(form).run(x, relu=act == "relu", residual=residual, engine=engine)

    def direct(self, x, act=None, residual=None):
        """oneDNN's direct convolution on the weight packed for x's shape, epilogue fused."""
        x = x.contiguous(memory_format=torch.channels_last)
        op = torch.ops.mkldnn._convolution_pointwise
        unary = ACTIVATIONS[act][1] if act else "none"
        weight = self.packed(x.shape)
        if residual is None:
            return op(x, weight, self.bias, self.padding, self.stride, self.dilation, self.groups, unary, [], "")
        # the binary form takes no activation as None ("none" is refused there)
        return op.binary(x, residual.contiguous(memory_format=torch.channels_last), weight, self.bias,
                         self.padding, self.stride, self.dilation, self.groups, "add", 1.0,
                         None if act is None else unary, [], "")

    def problem(self, x, act, residual) -> tuple:
        """What a form's timing depends on: geometry, epilogue, input shape and threads (`shape_key`)
        (FORM_BY_PROBLEM)."""
        return (tuple(self.weight.shape), tuple(self.stride), tuple(self.padding), tuple(self.dilation),
                self.groups, act, residual is not None, *shape_key(x.shape))

    @torch.compiler.disable
    def tuned_form(self, x, act, residual, forms) -> int | str | None:
        """The form among `forms` (None: direct) for this problem: timed on its first call in this
        process, kept after. Maps under 4×4 hold less than one F(2×2) input tile: direct."""
        def choose():
            candidates = forms
            if 4 in forms and min(x.shape[2:]) < 4:
                candidates = (None,)
            best = candidates[0] if len(candidates) == 1 else \
                fastest(candidates, lambda f: self.run_form(f, None, x, act, residual))[0]
            for t, conv in self._winograd.items():  # the losers' packings for this shape
                if t != best:
                    conv.drop_packed(x.shape)
            if best is not None:
                self._packed.pop(tuple(x.shape), None)
            # the GEMM's packing, where no input shape kept it
            if best != "gemm" and "gemm" not in self.chosen.values():
                self._gemm = None
            if best != "depthwise" and "depthwise" not in self.chosen.values():
                self._depthwise = None
            return best

        form = once(FORM_BY_PROBLEM, self.problem(x, act, residual), _FORM_LOCK, choose)
        self.chosen[tuple(x.shape)] = form
        return form
