"""Every vector path of the C kernels, tested on this machine. The sources choose AVX-512, AVX2
or scalar loops at compile time (`#if defined(__AVX512F__)`, `__AVX2__`), and the default build
(-march=native) compiles only the machine's own: a suite run on an AVX-512 machine never ran the
AVX2 loops that an AVX2 machine runs, nor anyone the scalar ones. Here the C kernel suites run
again in a subprocess with the libraries built for x86-64-v3 (AVX2 and FMA, where this CPU has
AVX-512) and for x86-64 (SSE2: the scalar loops), FERFUSE_MARCH; and the built code is checked to
be what it says it is: no 512-bit register in the AVX2 build, no 256-bit one in the scalar build."""
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ferfuse.engine import native

ROOT = Path(__file__).resolve().parents[2]
# the suites that run the C libraries' kernels against float64 (pointwise.c, winograd.c,
# depthwise.c, and mobile.c through the MBConv blocks)
SUITES = ["tests/engine/test_pointwise.py", "tests/engine/test_winograd.py", "tests/engine/test_depthwise.py"]
LIBRARIES = {"pointwise", "winograd", "depthwise", "mobile"}


# -march -> (the CPU flag without which it is what -march=native builds already, the register
# prefix its code must not hold)
BUILDS = {"x86-64-v3": ("avx512f", "%zmm"), "x86-64": ("avx2", "%ymm")}


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the vector paths are x86's")
@pytest.mark.parametrize("march", list(BUILDS))
def test_c_kernels_built_for_another_isa(march, tmp_path):
    wider, register = BUILDS[march]
    if wider not in native.cpu_flags():
        pytest.skip(f"this CPU has no {wider}: -march=native builds the {march} path, which the suites ran")
    env = dict(os.environ, FERFUSE_MARCH=march, FERFUSE_CACHE=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUITES],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"the C kernel suites built for {march}:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
    built = {path.name.split("-")[0]: path for path in tmp_path.glob("*.so")}
    assert set(built) == LIBRARIES, f"libraries built for {march}: {sorted(built)}"
    objdump = shutil.which("objdump")
    if objdump is None:
        return  # the suites passed; what the build holds cannot be read here
    for name, path in built.items():
        code = subprocess.run([objdump, "-d", str(path)], capture_output=True, text=True, check=True).stdout
        assert register not in code, f"{name} built for {march} holds {register} registers"
