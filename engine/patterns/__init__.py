"""The structures the engine knows, one matcher per file, tried in this order.

A matcher's `find(model, claimed, **unit_options)` returns fused units for what it can take and
`Skip` entries (with the reason) for candidates it must leave alone. Structures that cover others
(a model's attention heads) come before the generic trunk folding, which skips what they claimed.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Skip:
    pattern: str
    module: str
    reason: str


def is_claimed(name: str, claimed: set[str]) -> bool:
    """Whether `name` or one of its ancestors is already covered by a fused unit."""
    return any(name == c or name.startswith(c + ".") for c in claimed)


def qualified(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def find_networks(model, claimed: set[str], find_in, **kw) -> list:
    """A whole-network structure (attention heads over a `features` trunk: DAN's, MACA-Net's,
    MHAN's) where it sits: the model itself, or a module inside it (a wrapper that normalises the
    image first, a LightningModule holding the network). `find_in(network, prefix, claimed, **kw)`
    gives the units and Skips of one candidate, their module names qualified with `prefix`."""
    found, taken = [], set(claimed)
    for prefix, network in model.named_modules():
        if prefix and is_claimed(prefix, taken):
            continue
        items = find_in(network, prefix, taken, **kw)
        for item in items:
            if not isinstance(item, Skip):
                taken.update(item.names())
        found += items
    return found


def find_modules(pattern: str, model, claimed: set[str], is_candidate, reason, unit_class, **kw) -> list:
    """Every unclaimed submodule (the root excluded) that looks like the structure (`is_candidate`):
    a fused unit `unit_class(name, module, **kw)`, or a Skip with `reason(module)` where it gives one."""
    found = []
    for name, module in model.named_modules():
        if not name or not is_candidate(module) or is_claimed(name, claimed):
            continue
        why = reason(module)
        found.append(Skip(pattern, name, why) if why else unit_class(name, module, **kw))
    return found


def all_patterns():
    from .cbam import CBAMPattern
    from .conv import LoneConvPattern
    from .conv_bn import ConvBNPattern
    from .dan_heads import DANHeadsPattern
    from .maca_heads import MACAHeadsPattern
    from .mhan import MHANPattern
    from .mbconv import MBConvPattern
    from .mix_depthwise import MixDepthwisePattern
    from .resnet_block import ResNetBlockPattern
    from .transformer import TransformerLayerPattern

    return [MACAHeadsPattern(), DANHeadsPattern(), MHANPattern(), CBAMPattern(), MixDepthwisePattern(),
            MBConvPattern(), ResNetBlockPattern(), ConvBNPattern(), TransformerLayerPattern(),
            LoneConvPattern()]
