"""C kernels of the CPU executors (winograd.c, depthwise.c, pointwise.c): built with the system C
compiler on first use, cached under ~/.cache/ferfuse (FERFUSE_CACHE) per source (with the local
headers it includes), compiler, flags and CPU, and loaded with ctypes. Where no compiler is found
or the build fails, `Library.get()` raises `NativeUnavailable` with the reason, which optimize()
reports."""
import ctypes
import hashlib
import os
import platform
import re
import subprocess
import tempfile
import threading
from pathlib import Path

# -march=native: the machine's own vector width; no -ffast-math, so NaN and Inf stay IEEE;
# -fno-trapping-math (results unchanged, FP exceptions are never trapped here) lets gcc turn a
# select such as PReLU's `v > 0 ? v : a*v` into vector blends instead of a scalar branch.
# FERFUSE_MARCH builds for another -march (x86-64-v3: the AVX2 path; x86-64: the scalar one), so
# that one machine can test each path its sources hold (tests/engine/test_isa.py)
def flags() -> list[str]:
    march = os.environ.get("FERFUSE_MARCH") or "native"
    return ["-O3", f"-march={march}", "-mprefer-vector-width=512", "-fno-trapping-math", "-fopenmp", "-fPIC", "-shared"]


class NativeUnavailable(RuntimeError):
    """A C kernel library could not be built here (no C compiler, a failed build)."""


def cache_dir() -> Path:
    root = os.environ.get("FERFUSE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                            os.path.expanduser("~/.cache"), "ferfuse")
    return Path(root)


def _flags_line() -> str | None:
    """/proc/cpuinfo's first `flags` line, or None where there is none to read."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), None)
    except OSError:
        return None


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (avx2, avx512f, ...); empty where they cannot be read."""
    return set((_flags_line() or "").split())


def _cpu_signature() -> str:
    # -march=native code is only valid on CPUs with the same instruction sets
    return _flags_line() or platform.processor() + platform.machine()


def _with_local_includes(source: Path, seen: set | None = None) -> bytes:
    """The source's text and that of every local file it includes, however deep (activation.h
    includes sigmoid.h; mobile.c includes pointwise.c): all part of what it compiles to."""
    seen = set() if seen is None else seen
    seen.add(source.name)
    text = source.read_bytes()
    for name in sorted(set(re.findall(rb'^#include "([\w.]+)"', text, re.M))):
        if name.decode() not in seen:
            text += _with_local_includes(source.parent / name.decode(), seen)
    return text


def build(source: Path) -> ctypes.CDLL:
    """Compile `source` into a shared library (once per machine and source) and load it."""
    cc = os.environ.get("CC", "cc")
    text = _with_local_includes(source)
    options = flags()
    key = hashlib.sha256(text + " ".join([cc, *options, _cpu_signature()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            done = subprocess.run([cc, *options, str(source), "-o", tmp], capture_output=True, text=True)
        except OSError as err:
            os.unlink(tmp)
            raise NativeUnavailable(f"no C compiler ({cc}: {err.strerror})") from None
        if done.returncode != 0:
            os.unlink(tmp)
            first = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
            raise NativeUnavailable(f"{cc} failed on {source.name}: {first}")
        os.replace(tmp, target)  # atomic: a racing process finds a whole library or none
    return ctypes.CDLL(str(target))


class Library:
    """One C source, built on first use in this process; `declare(lib)` sets the argument types."""

    def __init__(self, source: Path, declare):
        self.source, self.declare = source, declare
        self._lib: ctypes.CDLL | None = None
        self._error: str | None = None
        self._lock = threading.Lock()

    def get(self) -> ctypes.CDLL:
        lib = self._lib
        if lib is not None:  # built: no lock on the per-call path
            return lib
        with self._lock:
            if self._lib is None and self._error is None:
                try:
                    lib = build(self.source)
                    self.declare(lib)
                    self._lib = lib
                except NativeUnavailable as err:
                    self._error = str(err)
            if self._lib is None:
                raise NativeUnavailable(self._error)
            return self._lib

    def unavailable_reason(self) -> str | None:
        try:
            self.get()
        except NativeUnavailable as err:
            return str(err)
        return None


def ptr(t):
    """A tensor's data pointer for a c_void_p argument (None for None): an int, which ctypes
    converts itself."""
    return None if t is None else t.data_ptr()
