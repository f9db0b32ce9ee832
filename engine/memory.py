"""Large CPU activations reused from call to call, not page-faulted afresh (glibc's malloc).

torch's CPU allocator takes every tensor from malloc. glibc serves a block over its mmap threshold
with fresh pages from mmap and unmaps it when it is freed; the threshold rises to the size of the
blocks freed, but never past 32 MB (DEFAULT_MMAP_THRESHOLD_MAX). So every activation over 32 MB is
faulted in and zeroed by the kernel page by page, on every call. DAN at batch 32, whose stem output
alone is 103 MB, took 48,500-66,800 page faults a forward and 590-626 ms, against 408-447 ms with
the blocks kept on the heap; MHAN at batch 32 439 ms against 294 (2-core Zen 4, AVX-512). ONNX
Runtime plans its intermediates into an arena and pays none of this. (The mobile blocks' own C
intermediates live in scratch.py's per-thread buffers whatever malloc does.)

`keep_large_blocks()` raises glibc's mmap and trim thresholds to KEEP_BYTES (mallopt), so that such
blocks come from the heap and a freed one serves the next call, as an arena does: the process keeps
the memory of its largest call, up to KEEP_BYTES free. It is process-wide and stays set (revert()
does not undo it), applied once, and only where malloc is glibc's and the environment sets neither
threshold itself (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES). Blocks allocated
by threads other than the main one come from glibc's per-thread arenas, whose heaps hold at most
64 MB: larger ones are still mapped afresh there. optimize(reuse_memory=False) leaves malloc alone."""
import ctypes
import ctypes.util
import os
import platform
import threading

# the blocks kept on the heap, and the free memory the heap keeps before returning any: DAN's
# largest activation at batch 256 is 822 MB
KEEP_BYTES = 1 << 30
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")

_LOCK = threading.Lock()
_DONE: str | None = None  # the note, once applied or refused


def _glibc():
    """glibc's libc when it is the process's malloc; else (None, why not)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        libc = " ".join(filter(None, platform.libc_ver())) or "an unnamed C library"
        return None, f"malloc is not glibc's ({platform.system()}, {libc}): left as it is"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    process = ctypes.CDLL(None)
    if ctypes.cast(process.malloc, ctypes.c_void_p).value != ctypes.cast(libc.malloc, ctypes.c_void_p).value:
        return None, "malloc is not glibc's (an allocator such as jemalloc or tcmalloc is preloaded): left to it"
    return libc, None


def _set_by_environment() -> str | None:
    named = [name for name in ENVIRONMENT if name in os.environ]
    named += [t for t in TUNABLES if t in os.environ.get("GLIBC_TUNABLES", "")]
    return ", ".join(named) or None


def keep_large_blocks() -> str:
    """Raise glibc's mmap and trim thresholds to KEEP_BYTES, once per process; the report's note
    on what was done, or why not."""
    global _DONE
    with _LOCK:
        if _DONE is None:
            _DONE = _apply()
        return _DONE


def _apply() -> str:
    prefix = "memory: "
    named = _set_by_environment()
    if named:
        return prefix + f"glibc's malloc thresholds left as the environment sets them ({named})"
    libc, why = _glibc()
    if libc is None:
        return prefix + why
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # trim first: a raised mmap threshold with the default trim threshold would return each freed
    # block at the heap's top to the kernel, and fault it in again on the next call
    if not (libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) and libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)):
        return prefix + "glibc refused the raised malloc thresholds (mallopt): activations over 32 MB are " \
                        "page-faulted afresh on every call"
    gib = KEEP_BYTES / (1 << 30)
    return prefix + (f"glibc's malloc keeps blocks up to {gib:g} GiB on its heap for reuse, process-wide (mallopt "
                     "M_MMAP_THRESHOLD and M_TRIM_THRESHOLD; by default it maps each activation over 32 MB afresh "
                     "and page-faults it on every call); optimize(reuse_memory=False) leaves malloc alone")
