"""Test setup shared by every suite.

Without a GPU the Triton kernels run under the interpreter on CPU tensors; TRITON_INTERPRET is
read when `@triton.jit` decorates a kernel, i.e. when ferfuse.kernels is imported, so it is set
here, before any test module imports ferfuse.
"""
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import sys  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py, importable from every suite


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def poisoned_empty():
    """torch.empty fills floating outputs with NaN: a kernel that skips an element fails."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(before)
