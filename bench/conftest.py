"""Shared setup for the latency suites.

The parametrisation comes from options (the `ferfuse bench` command sets them); the defaults are
the small set CI runs once each with --benchmark-disable."""
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("ferfuse bench")
    group.addoption("--bench-device", default="cpu", choices=["cpu", "cuda"])
    group.addoption("--bench-models", default="dan", help="comma-separated registry names")
    group.addoption("--bench-batches", default="1", help="comma-separated batch sizes")
    group.addoption("--bench-dtypes", default="fp32", help="comma-separated: fp32, fp16, bf16")
    group.addoption("--bench-providers", default="all", help="comma-separated providers, or 'all'")
    group.addoption("--bench-quick", action="store_true", help="fewer timed rounds per case")


def pytest_generate_tests(metafunc):
    opt = metafunc.config.getoption
    if "provider" in metafunc.fixturenames:
        from providers import PROVIDERS

        chosen = PROVIDERS if opt("--bench-providers") == "all" else opt("--bench-providers").split(",")
        metafunc.parametrize("provider", chosen)
    if "model_name" in metafunc.fixturenames:
        metafunc.parametrize("model_name", opt("--bench-models").split(","))
    if "batch" in metafunc.fixturenames:
        metafunc.parametrize("batch", [int(b) for b in opt("--bench-batches").split(",")])
    if "dtype_name" in metafunc.fixturenames:
        metafunc.parametrize("dtype_name", opt("--bench-dtypes").split(","))


@pytest.fixture
def device(request):
    dev = request.config.getoption("--bench-device")
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return dev




@pytest.fixture
def record(benchmark):
    """Fill a benchmark row's extra_info with what a result needs to be read later."""
    import triton
    from providers import device_name

    def fill(**info):
        device = info.get("device", "cpu")
        benchmark.extra_info.update(info)
        benchmark.extra_info.update(device_name=device_name(device), torch=torch.__version__,
                                    triton=triton.__version__)
        if device == "cuda":
            benchmark.extra_info.update(cuda=torch.version.cuda,
                                        capability="sm_%d%d" % torch.cuda.get_device_capability(0))
        benchmark.group = info.get("group", benchmark.group)

    return fill
