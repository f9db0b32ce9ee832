"""What MHAN's mobile blocks (mix_depthwise.py) and EfficientNet's (mbconv.py) share as fused
units: one block module covered whole; on the oneDNN executors its convs on oneDNN around C passes
(engine/depthwise.py), on aten torch ops; a report note where the C passes cannot be built."""
from ..depthwise import LIBRARY
from ..executors import ONEDNN_EXECUTORS
from ..fused import FusedUnit
from . import Skip, is_claimed


class MobileBlockUnit(FusedUnit):
    def __init__(self, name: str, block, **kw):
        super().__init__({name: block}, **kw)
        self.block = block

    def runs_c(self) -> bool:
        """Whether this call runs the C passes: a oneDNN executor, and the C kernels built."""
        return self.conv_executor() != "aten" and LIBRARY.unavailable_reason() is None

    def notes(self, executors):
        reason = LIBRARY.unavailable_reason() if set(executors) & set(ONEDNN_EXECUTORS) else None
        return [f"the depthwise C kernels are unavailable ({reason}): {self.pattern} blocks run their folded "
                "weights as torch ops"] if reason else []

    def reference(self, modules, x):
        return modules[0](x)

    def install(self, model):
        self.install_forward(self.block, f"{self.block._get_name()}[fused: {self.pattern}]")


def find_blocks(pattern, model, claimed, is_candidate, block_reason, unit_class, **kw):
    """Every unclaimed module that looks like the block (`is_candidate`): a fused unit, or a Skip
    with `block_reason`'s reason."""
    found = []
    for name, module in model.named_modules():
        if not name or not is_candidate(module) or is_claimed(name, claimed):
            continue
        reason = block_reason(module)
        found.append(Skip(pattern, name, reason) if reason else unit_class(name, module, **kw))
    return found
