"""Loading local checkpoints safely, in the formats the upstream code writes.

Only `torch.load(..., weights_only=True)` is used: a file whose unpickling would run code is
refused before anything in it executes.
"""
import os
import pickle
from collections.abc import Mapping

import torch
import torch.nn as nn

# Keys under which upstream training scripts nest the weights ({'model_state_dict': sd, ...}).
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model", "net")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the requested model; the message says why."""


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a local checkpoint and return a plain state_dict.

    Accepts a bare state_dict, the upstream wrappers ({'model_state_dict': ...},
    {'state_dict': ...}) and DataParallel's `module.` prefix.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {os.fspath(path)!r}: it holds objects other than tensors and plain "
            f"containers, and unpickling them could run code (weights_only=True). "
            f"Re-save the state_dict alone. Detail: {str(err).splitlines()[0]}"
        ) from None
    return unwrap_state_dict(obj, source=os.fspath(path))


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    for key in _WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key.removeprefix("module.")] = value
    return state


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """`load_state_dict(strict=True)` with an error that names every missing, unexpected and
    mis-shaped key, and calls a classifier-size mismatch what it is."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mis_shaped = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mis_shaped:
        lines = [f"{source} does not fit {type(model).__name__}:"]
        classifier = [k for k in mis_shaped if k.split(".")[0] in ("fc", "bn")]
        if classifier:
            k = classifier[0]
            lines.append(
                f"  class count: the checkpoint has {state[k].shape[0]} classes ({k} {tuple(state[k].shape)}), "
                f"the model {own[k].shape[0]} ({tuple(own[k].shape)})"
            )
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}")
        for k in mis_shaped:
            lines.append(f"  shape of {k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    return model
