"""Reference networks (faithful to the upstream code) and their training losses.

Nothing here is about speed; `model.optimize()` hands a model to `ferfuse.engine`.
"""
from .base import LABELS, FERModel, randomize_batchnorm
from .checkpoint import CheckpointError, load_state_dict
from .dan import DAN, dan
from .losses import AffinityLoss, DANLoss, PartitionLoss
from .registry import get, list_models, register

__all__ = [
    "LABELS", "FERModel", "randomize_batchnorm", "CheckpointError", "load_state_dict", "DAN", "dan",
    "AffinityLoss", "DANLoss", "PartitionLoss", "get", "list_models", "register",
]
