"""Per-thread scratch maps for the intermediates of a mobile block's C path (the expand conv's
output and the depthwise conv's), reused from block to block and call to call.

Why: torch's CPU allocator takes each tensor from glibc, which serves a block over its mmap
threshold (at most 32 MB) with fresh pages on every call, and the kernel then faults in and zeroes
every page as the first write touches it, both threads contending for the one address space. On
the 2-core AVX2 EPYC, HAFEM at batch 8 allocated its block 2.0 expand output (8×144×112×112, 58 MB)
so: 14,113 page faults per forward, and its GEMM took 25-42 ms. ONNX Runtime plans its
intermediates into a reused arena and pays none of this.

A map from `scratch(slot, shape)` is valid until this thread asks for the same slot again, so a
caller uses it only for what dies inside its own call (never a returned tensor). A slot grows to
the largest map asked of it and is kept: the memory of one block's largest intermediates, per
thread, as an arena holds it; `release()` gives it back."""
import math
import threading

import torch

_LOCAL = threading.local()


def scratch(slot: int, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """An uninitialised channels-last float32 CPU map of `shape` (N×C×H×W) in this thread's buffer
    `slot` (NaN-filled where torch.empty's would be: deterministic algorithms with
    torch.utils.deterministic.fill_uninitialized_memory, as the tests run)."""
    buffers = _LOCAL.__dict__.setdefault("buffers", {})
    flat, views = buffers.get(slot, (None, None))
    view = views.get(shape) if views is not None else None
    if view is None:
        n, c, h, w = shape
        numel = math.prod(shape)
        if flat is None or flat.numel() < numel:
            flat = views = buffers[slot] = None  # the smaller one is freed before the larger is allocated
            with torch.inference_mode(False):  # reused by later calls, in any mode (fused.py folded)
                flat, views = buffers[slot] = torch.empty(numel), {}
        # the views are kept too: the same shapes recur on every call
        view = views[shape] = flat.as_strided((n, c, h, w), (h * w * c, 1, w * c, c))
    if torch.utils.deterministic.fill_uninitialized_memory and torch.are_deterministic_algorithms_enabled():
        view.fill_(float("nan"))  # as torch.empty does under this debug setting: a skipped element shows
    return view


def output_map(shape: tuple[int, int, int, int], slot: int | None = None) -> torch.Tensor:
    """Where a C pass writes its N×C×H×W output: a fresh channels-last float32 map, or with `slot`
    this thread's scratch map in that slot."""
    return torch.empty(shape, memory_format=torch.channels_last) if slot is None else scratch(slot, shape)


def held() -> list[torch.Tensor]:
    """This thread's scratch buffers (flat), one per slot asked of so far."""
    return [flat for flat, _ in _LOCAL.__dict__.get("buffers", {}).values()]


def held_bytes() -> int:
    """The bytes this thread's scratch buffers hold."""
    return sum(flat.numel() * flat.element_size() for flat in held())


def release():
    """Free this thread's scratch buffers (the next block call allocates them again)."""
    _LOCAL.__dict__.pop("buffers", None)
