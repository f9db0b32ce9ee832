"""Shared setup for the latency suites: the conftest of tests/ sets TRITON_INTERPRET on machines
without a GPU; this one adds the machine description to every benchmark row."""
import os
import platform
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()}, " \
           f"{torch.get_num_threads()} threads)"


@pytest.fixture
def record(benchmark):
    """Fill a benchmark row's extra_info with what a result needs to be read later."""
    import triton

    def fill(**info):
        device = info.get("device", "cpu")
        benchmark.extra_info.update(info)
        benchmark.extra_info.update(device_name=device_name(device), torch=torch.__version__,
                                    triton=triton.__version__)
        if device == "cuda":
            benchmark.extra_info["driver"] = torch.version.cuda
        benchmark.group = info.get("group", benchmark.group)

    return fill
