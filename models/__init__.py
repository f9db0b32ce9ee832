"""Reference networks (faithful to the upstream code) and their training losses.

Nothing here is about speed; `model.optimize()` hands a model to `ferfuse.engine`.
"""
from .base import LABELS, FERModel, randomize_batchnorm
from .checkpoint import CheckpointError, load_state_dict
from .dan import DAN, dan
from .hafem import HAFEM, HAFEMConfig, hafem
from .losses import (AffinityLoss, AFCLoss, AttentionDiversityLoss, CenterLoss, DANLoss, HAFEMLoss, MACALoss,
                     MHANLoss, MILoss, PartitionLoss)
from .maca_net import MACAConfig, MACANet, maca_net
from .mhan import MHAN, mhan
from .registry import get, list_models, register

__all__ = [
    "LABELS", "FERModel", "randomize_batchnorm", "CheckpointError", "load_state_dict",
    "DAN", "dan", "MACANet", "MACAConfig", "maca_net", "MHAN", "mhan", "HAFEM", "HAFEMConfig", "hafem",
    "AffinityLoss", "PartitionLoss", "DANLoss", "AFCLoss", "MILoss", "MACALoss", "AttentionDiversityLoss",
    "MHANLoss", "CenterLoss", "HAFEMLoss", "get", "list_models", "register",
]
