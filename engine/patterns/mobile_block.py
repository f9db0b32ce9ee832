"""What MHAN's mobile blocks (mix_depthwise.py) and EfficientNet's (mbconv.py) share as fused
units: one block module covered whole; on the oneDNN executors its convs on oneDNN around C passes
(engine/depthwise.py), on aten torch ops; a report note where the C passes cannot be built."""
import torch.nn as nn

from ..depthwise import LIBRARY
from ..executors import ONEDNN_EXECUTORS
from ..fused import FusedUnit


def is_one_by_one(conv, c_in: int | None = None, c_out: int | None = None) -> bool:
    """A dense 1×1 Conv2d, stride 1, no padding (from c_in to c_out channels where given)."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.groups == 1 and (c_in is None or conv.in_channels == c_in)
            and (c_out is None or conv.out_channels == c_out))


def is_same_depthwise(conv) -> bool:
    """A depthwise Conv2d with an odd square kernel, zero padding k/2, no dilation, one stride both ways."""
    if not isinstance(conv, nn.Conv2d):
        return False
    k = conv.kernel_size[0]
    return (conv.groups == conv.in_channels == conv.out_channels and conv.kernel_size == (k, k) and k % 2 == 1
            and conv.padding == (k // 2, k // 2) and conv.dilation == (1, 1) and conv.stride[0] == conv.stride[1]
            and conv.padding_mode == "zeros")


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

