"""Latency of whole models: every provider side by side in one process, per model, batch and dtype.

    ferfuse bench --device cpu --model dan --batch 1 8 --json out.json
    python -m pytest bench/test_latency.py --benchmark-enable --benchmark-only --bench-models dan,mhan

GPU timing synchronises around every call; warm-up covers JIT, autotuning and graph capture."""
import pytest
import torch

from ferfuse import models
from providers import available, build, settle

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def test_latency(benchmark, record, pytestconfig, provider, model_name, batch, dtype_name, device):
    reason = available(provider, device)
    if reason:
        pytest.skip(reason)
    dtype = DTYPES[dtype_name]
    if device == "cpu" and dtype != torch.float32:
        pytest.skip("half precision is timed on GPU")
    torch.manual_seed(0)
    model = models.randomize_batchnorm(models.get(model_name), seed=0).eval().to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *model.input_size, generator=gen).to(device, dtype)
    settle()  # the previous test's provider: its workers may still spin
    run = build(provider, model, x, device, dtype)
    for _ in range(3):  # warm-up: JIT, autotuning, packing, graph capture
        run(x)
    _sync(device)

    def timed():
        out = run(x)
        _sync(device)
        return out

    record(model=model_name, provider=provider, batch=batch, dtype=dtype_name, device=device,
           group=f"{model_name}-b{batch}-{dtype_name}-{device}")
    quick = pytestconfig.getoption("--bench-quick")
    benchmark.pedantic(timed, rounds=3 if quick else max(7, 64 // batch), warmup_rounds=1)
