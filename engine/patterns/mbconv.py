"""EfficientNet's inverted-residual blocks (torchvision's MBConv: HAFEM's EfficientNet-B5 trunk),
found by structure: a module with `block`, an nn.Sequential of
- an optional 1×1 expand conv + BatchNorm2d + activation (Conv2dNormActivation),
- a depthwise k×k conv + BatchNorm2d + activation,
- squeeze-and-excitation (`avgpool`, `fc1`, `fc2`, `activation`, sigmoid `scale_activation`),
- a 1×1 project conv + BatchNorm2d,
and `use_res_connect` (x + block(x); `stochastic_depth` is the identity in eval mode).

Folded (eval mode): every BatchNorm into its conv. On the oneDNN executors the block is four
calls: the expand conv with its activation in the epilogue; the depthwise conv with its own; one C
pass for squeeze-and-excitation (GAP, the MLP, the gate applied in place; engine/depthwise.c)
instead of six torch ops; and the project conv with the residual add in its epilogue. On the
winograd executor each conv runs in the form its first call at an input shape timed fastest: the
1×1 convs on ferfuse's GEMM (engine/pointwise.py) or oneDNN, the depthwise conv on depthwise.c's
register-blocked loops or oneDNN's brdgmm kernel. Where all of a block's convs took ferfuse's C
forms at a shape, its later calls there are one C call (engine/mobile.py): the same passes, no
Python between them; and the nn.Sequentials holding the blocks (stages, the trunk) run the blocks
that are one C call back to back in one call (BlockChain). On aten (and CUDA, and export) the same
folded weights run as torch ops.
"""
from collections import Counter

import torch
import torch.nn as nn

from .. import mobile
from ..algebra import layer_bias
from ..depthwise import ACTIVATIONS, SqueezeExcite
from ..executors import FORCED_FORM, fastest
from ..fused import UNIT_ATTR, bind, fused_forward, global_hooks, installed_forward, in_original_path, original_forward
from ..mobile import MBConvCall, MBConvChain
from .conv_bn import FUSABLE_ACTIVATIONS, foldable_reason, folded_conv
from . import find_modules
from .mobile_block import MobileBlockUnit, is_one_by_one, is_same_depthwise

# activation modules both a oneDNN conv epilogue (conv_bn's table) and the C squeeze-excite pass
# (engine/depthwise.py ACTIVATIONS) apply: EfficientNet's SiLU, and ReLU
_ACT_NAMES = {module: name for module, name in FUSABLE_ACTIVATIONS.items() if name in ACTIVATIONS}


def _act_name(module) -> str:
    return _ACT_NAMES[type(module)]


def _conv_norm_act(layer, what: str, depthwise: bool = False) -> str | None:
    """Why `layer` is not Sequential(Conv2d, BatchNorm2d[, SiLU | ReLU]) of the expected kind."""
    if not isinstance(layer, nn.Sequential) or len(layer) not in (2, 3):
        return f"the {what} is not Sequential(conv, BatchNorm2d[, activation])"
    conv, bn = layer[0], layer[1]
    reason = foldable_reason(conv, bn)
    if reason:
        return f"the {what}: {reason}"
    if len(layer) == 3 and type(layer[2]) not in _ACT_NAMES:
        return f"the {what}'s activation is {type(layer[2]).__name__}, not SiLU or ReLU"
    if depthwise and not is_same_depthwise(conv):
        return f"the {what} is not a depthwise odd square same-padded conv"
    if not depthwise and not is_one_by_one(conv):
        return f"the {what} is not a 1×1 conv"
    return None


def block_reason(module: nn.Module) -> str | None:
    layers = list(module.block)
    if len(layers) not in (3, 4):
        return f"block has {len(layers)} layers, not [expand,] depthwise, squeeze-excite, project"
    expand, (dw, se, project) = (layers[0] if len(layers) == 4 else None), layers[-3:]
    checks = ([(expand, "expand conv", False)] if expand is not None else []) + [(dw, "depthwise conv", True)]
    for layer, what, depthwise in checks:
        reason = _conv_norm_act(layer, what, depthwise)
        if reason:
            return reason
    reason = _conv_norm_act(project, "project conv")
    if reason or len(project) != 2:
        return reason or "the project conv has an activation"
    c = dw[0].out_channels
    fc1, fc2 = getattr(se, "fc1", None), getattr(se, "fc2", None)
    if not (isinstance(getattr(se, "avgpool", None), nn.AdaptiveAvgPool2d) and se.avgpool.output_size in (1, (1, 1))
            and is_one_by_one(fc1, c) and is_one_by_one(fc2, fc1.out_channels, c)):
        return "no squeeze-excite (avgpool, fc1, fc2) over the depthwise conv's channels"
    if type(getattr(se, "activation", None)) not in _ACT_NAMES or type(getattr(se, "scale_activation", None)) \
            is not nn.Sigmoid:
        return "squeeze-excite's activations are not SiLU/ReLU then Sigmoid"
    residual = getattr(module, "use_res_connect", None)
    if not isinstance(residual, bool):
        return "no boolean use_res_connect"
    c_in = (expand if expand is not None else dw)[0].in_channels
    if residual and (project[0].out_channels != c_in or dw[0].stride != (1, 1)):
        return "a residual block that changes shape"
    return None


class FusedMBConv(MobileBlockUnit):
    pattern = "mbconv"

    def __init__(self, name: str, block: nn.Module, **kw):
        super().__init__(name, block, **kw)
        layers = list(block.block)
        self.expand = layers[0] if len(layers) == 4 else None
        self.dw, self.se, self.project = layers[-3:]
        # the epilogue activations of the expand and depthwise convs (None: the layer has none)
        self.expand_act = _act_name(self.expand[2]) if self.expand is not None and len(self.expand) == 3 else None
        self.dw_act = _act_name(self.dw[2]) if len(self.dw) == 3 else None

    def fold(self, device):
        dt = self.dtype
        se = self.se
        w1, b1, w2, b2 = (t.detach().to(device, dt) for t in (  # a view of a parameter keeps its grad
            se.fc1.weight.flatten(1), layer_bias(se.fc1), se.fc2.weight.flatten(1), layer_bias(se.fc2)))
        gate = SqueezeExcite(w1, b1, w2, b2, _act_name(se.activation))
        # each layer is Sequential(conv, bn[, activation]); slicing one would build a new layer
        out = {"dw": folded_conv(self.dw[0], self.dw[1], device, dt), "se": gate,
               "project": folded_conv(self.project[0], self.project[1], device, dt)}
        if self.expand is not None:
            out["expand"] = folded_conv(self.expand[0], self.expand[1], device, dt)
        return out

    def forward(self, x):
        f = self.folded(x.device)
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        if not self.runs_c():
            u = f["expand"].run(x, act=self.expand_act, executor="aten") if "expand" in f else x
            y = f["se"].run_torch(f["dw"].run(u, act=self.dw_act, executor="aten"))
            return f["project"].run(y, residual=x if self.block.use_res_connect else None, executor="aten")
        executor = self.conv_executor()  # onednn, or winograd: each 1×1 conv on its timed GEMM
        call = self.block_call(f, x, executor)
        return call.run(x, self.block.use_res_connect) if call is not None else self.four_calls(f, x, executor)

    def four_calls(self, f: dict, x, executor: str):
        """The block as four calls, each conv in the form its own first call at the shape chose."""
        residual = x if self.block.use_res_connect else None
        # u and y die in this call: ferfuse's C forms write them into this thread's scratch maps
        u = f["expand"].run(x, act=self.expand_act, executor=executor, scratch_slot=0) if "expand" in f else x
        y = f["dw"].run(u, act=self.dw_act, executor=executor, scratch_slot=1)
        y = y.contiguous(memory_format=torch.channels_last)
        return f["project"].run(f["se"].run_c(y), residual=residual, executor=executor)  # the gate: on y in place

    def __getstate__(self):  # the block calls hold raw pointers into this copy's folded weights
        state = super().__getstate__()
        state.pop("_calls", None)
        return state

    def install(self, model):
        super().install(model)
        # the nn.Sequentials holding this block (a stage, the trunk holding the stages) run their
        # blocks' C calls back to back (BlockChain)
        self.stages = []
        name = self.names()[0]
        while name and type(parent := model.get_submodule(name := name.rpartition(".")[0])) is nn.Sequential:
            if CHAIN_ATTR not in parent.__dict__:
                parent.__dict__[CHAIN_ATTR] = BlockChain()
                parent.forward = bind(chained_forward, parent)
            self.stages.append(parent)

    def uninstall(self):
        super().uninstall()
        for stage in self.__dict__.pop("stages", ()):
            if CHAIN_ATTR in stage.__dict__ and not any(
                    isinstance(m.__dict__.get(UNIT_ATTR), FusedMBConv) for m in stage.modules()):
                del stage.__dict__[CHAIN_ATTR], stage.__dict__["forward"]

    def tally(self) -> dict:
        """How this block runs at each input shape the tuned (winograd) executor met."""
        calls = self.__dict__.get("_calls")
        ways = Counter(("one C call with the blocks beside it" if call.chained else "one C call")
                       if call is not None else "four calls"
                       for key, call in (calls[1].items() if calls else ()) if key[1] == "winograd")
        return {"MBConv blocks": ways} if ways else {}

    def block_call(self, f: dict, x, executor: str) -> MBConvCall | None:
        """The block as one C call (engine/mobile.py) at x's shape, or None: the four calls.

        Decided once per shape, after the convs' own first calls there (made one conv at a time:
        they choose each conv's form; None until then). Where each chose ferfuse's C form, the
        one call. Where some chose oneDNN, on the tuned executor, the one call is timed against
        the four calls and the faster kept: a conv's own timing cannot see the Python between
        the four calls (~90 µs a block in place on the 2-core AVX2 EPYC), which the one call
        saves. A forced form (what verification runs) keeps exactly its forms."""
        calls = self.__dict__.get("_calls")
        if calls is None or calls[0] is not f:  # new folded weights: new pointers
            calls = self._calls = (f, {})
        key = (x.shape, executor, torch.get_num_threads())
        if key in calls[1]:
            return calls[1][key]
        n, _, h, w = x.shape
        dw, c = f["dw"], f["dw"].weight.shape[0]
        pointwise = [f["project"]] + ([f["expand"]] if "expand" in f else [])
        planned = dw.planned((n, c, h, w), self.dw_act, False, executor)
        if planned is None:
            return None  # not planned yet: the four calls plan it now
        call = None
        if dw.can_take("depthwise") and all(r.can_take("gemm") for r in pointwise) \
                and mobile.LIBRARY.unavailable_reason() is None:
            ho, wo = dw.depthwise().out_size(h, w)
            plans = [planned, f["project"].planned((n, c, ho, wo), None, self.block.use_res_connect, executor)]
            if "expand" in f:
                plans.append(f["expand"].planned(tuple(x.shape), self.expand_act, False, executor))
            if None in plans:
                return None
            expand = f["expand"].gemm() if "expand" in f else None
            call = MBConvCall(expand, self.expand_act, dw.depthwise(), self.dw_act, f["se"], f["project"].gemm())
            all_c = [p[0] for p in plans] == ["depthwise"] + ["gemm"] * (len(plans) - 1)
            tuned = executor not in FORCED_FORM and executor != "onednn"
            if not all_c and (not tuned or fastest(("one", "four"), lambda way: call.run(
                    x, self.block.use_res_connect) if way == "one" else self.four_calls(f, x, executor))[0] == "four"):
                call = None
        calls[1][key] = call
        return call


CHAIN_ATTR = "_ferfuse_chain"
_CPU = torch.device("cpu")  # the device chained blocks run on (their folded weights' key)


def chained_forward(self, x):
    """The forward of an nn.Sequential holding fused MBConv blocks (BlockChain.forward); an empty
    batch goes through the blocks one by one (fused_forward gives each its own forward)."""
    return self.__dict__[CHAIN_ATTR].forward(self, x) if x.numel() else original_forward(self, x)


class BlockChain:
    """Runs the MBConv blocks of an nn.Sequential (an EfficientNet trunk or one of its stages)
    that are one C call at their input shapes back to back in one C call (mobile.py
    MBConvChain): the same calls, bit for bit, without the Python between blocks. Nested plain
    nn.Sequentials without hooks (the stages) are looked through, so a trunk's 39 blocks are one
    call. On the 2-core Zen 4 (AVX-512) the Python between blocks, each block's folded-weight
    check included, cost 60-140 µs a block in HAFEM's forward at batch 1, ~4 ms of 40.

    Planned per input shape, executor and thread count from a forward run module by module (each
    block plans its own call there). Before each chained run every block is checked as its own
    call would check it (`Run.ready`); a block with hooks, or one in training mode, runs as a
    module between runs."""

    def __init__(self):
        self.plans: dict[tuple, Plan] = {}

    def __getstate__(self):  # plans hold raw pointers into this copy's folded weights
        return {"plans": {}}

    def forward(self, stage: nn.Sequential, x):
        modules = tuple(_flatten(stage, []))
        unit = next((u for m in modules if isinstance(u := m.__dict__.get(UNIT_ATTR), FusedMBConv)), None)
        if unit is None or not (isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dtype == torch.float32
                                and x.dim() == 4) \
                or in_original_path() or torch.compiler.is_compiling() or torch.jit.is_tracing() \
                or (torch.is_grad_enabled() and x.requires_grad) or global_hooks():
            return original_forward(stage, x)
        key = (x.shape, unit.conv_executor(), torch.get_num_threads())
        plan = self.plans.get(key)
        if plan is not None and plan.holds(modules):
            for step in plan.steps:
                x = step.chain.run(x) if isinstance(step, Run) else step(x)
            return x
        shapes = []  # module by module, as the nn.Sequentials run them, noting each input's shape
        for module in modules:
            shapes.append(x.shape)
            x = module(x)
        plan = Plan.of(modules, shapes, key[1:])
        if plan is not None:
            self.plans[key] = plan
        return x


def _runs_its_call(module: nn.Module, unit: FusedMBConv) -> bool:
    """Whether a fused block, called as a module now, would run its fused forward unseen: still
    fused, active, no hooks of its own, its forward the one the unit installed."""
    return (module.__dict__.get(UNIT_ATTR) is unit and not (module._forward_hooks or module._forward_pre_hooks)
            and installed_forward(module) is fused_forward
            and unit.active(module) and not unit.aten_only())


class Plan:
    """One input shape's steps: a module called as such, or a Run of blocks."""

    def __init__(self, modules: tuple, steps: list, held: list):
        self.modules, self.steps, self.held = modules, steps, held

    @classmethod
    def of(cls, modules: tuple, shapes: list, rest: tuple) -> "Plan | None":
        """The plan for modules that took `shapes` as inputs; None while a block has yet to decide
        its call there (its first call at a shape plans its convs)."""
        steps, run, held = [], [], []
        for module, shape in zip(modules, shapes):
            unit = module.__dict__.get(UNIT_ATTR)
            if isinstance(unit, FusedMBConv) and not _runs_its_call(module, unit):
                held.append((module, unit))  # a module while it must be seen (a hook, training mode)
            elif isinstance(unit, FusedMBConv):
                calls, key = unit.__dict__.get("_calls"), (shape, *rest)
                if unit.runs_c() and (calls is None or key not in calls[1]):
                    return None
                call = calls[1].get(key) if calls is not None else None
                if call is not None:  # one C call at this shape
                    run.append((module, unit, calls[0], call, shape))
                    continue
            if run:
                steps.append(Run(run))
                run = []
            steps.append(module)
        if run:
            steps.append(Run(run))
        return cls(modules, steps, held)

    def holds(self, modules: tuple) -> bool:
        """Whether this plan still runs `modules` as their own calls would: the same modules, every
        run's blocks ready, and no block held out that could now join a run."""
        return self.modules == modules and all(step.ready() for step in self.steps if isinstance(step, Run)) \
            and not any(_runs_its_call(module, unit) for module, unit in self.held)


class Run:
    """Blocks in a row, each one C call at its input shape, as one MBConvChain."""

    def __init__(self, blocks: list[tuple]):
        self.checks = [(module, unit, folded) for module, unit, folded, _, _ in blocks]
        for _, _, _, call, _ in blocks:
            call.chained = True  # the report's tally
        self.chain = MBConvChain([(call, module.use_res_connect) for module, _, _, call, _ in blocks], blocks[0][4])

    def ready(self) -> bool:
        """Whether each block would run its planned C call now: as a module it would run its fused
        forward unseen, and its folded weights (checked as its own call checks them, rebuilt after
        a change) are those the chain points into."""
        return all(_runs_its_call(module, unit) and unit.folded(_CPU) is folded for module, unit, folded in self.checks)


def _flatten(stage: nn.Sequential, into: list) -> list:
    """The modules `stage` runs, in order, looking through nested nn.Sequentials that run as
    plain ones (no hooks, their forward nn.Sequential's own or a BlockChain's)."""
    for child in stage._modules.values():
        if type(child) is nn.Sequential and not (child._forward_hooks or child._forward_pre_hooks) and (
                "forward" not in child.__dict__ or installed_forward(child) is chained_forward):
            _flatten(child, into)
        else:
            into.append(child)
    return into


class MBConvPattern:
    name = "mbconv"

    def find(self, model: nn.Module, claimed: set[str], **kw):
        def candidate(m):
            return isinstance(getattr(m, "block", None), nn.Sequential) and hasattr(m, "use_res_connect")

        return find_modules(self.name, model, claimed, candidate, block_reason, FusedMBConv, **kw)
