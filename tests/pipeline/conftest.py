"""Fixtures of the pipeline tests: one optimised DAN and its pipeline for the session."""
import copy

import pytest
import torch

from ferfuse import models


@pytest.fixture(scope="session")
def dan_pair():
    """(original, optimised) DAN with seeded random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    original = models.randomize_batchnorm(models.dan(), seed=0).eval()
    return original, copy.deepcopy(original).optimize()


@pytest.fixture(scope="session")
def dan_pipeline(dan_pair):
    from ferfuse.pipeline import FacePipeline

    return FacePipeline(dan_pair[1], batch_size=2)
