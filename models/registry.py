"""Model registry: `get(name, **kw)`, `list_models()`, and the `register` decorator."""
from typing import Callable

import torch.nn as nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Register a torchvision-style constructor under `name`."""

    def wrap(builder):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return wrap


def get(name: str, **kwargs) -> nn.Module:
    """Build the registered model `name` with the constructor's keyword arguments."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    return builder(**kwargs)


def list_models() -> list[str]:
    return sorted(_BUILDERS)
