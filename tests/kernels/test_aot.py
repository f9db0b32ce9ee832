"""Ahead-of-time compilation of every kernel configuration for sm_80 and sm_90 on this machine
(no GPU needed): catches what the interpreter forgives, checks shared memory against the target's
limit, and that the fp16/bf16 GEMMs use tensor cores. Both targets compile in parallel
subprocesses with TRITON_INTERPRET unset."""
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def aot_outputs():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = {t: subprocess.Popen([sys.executable, "-m", "ferfuse.kernels.aot", "--target", t], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for t in ("sm_80", "sm_90")}
    return {t: (p.communicate(timeout=900)[0], p.returncode) for t, p in procs.items()}


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
def test_every_configuration_compiles_and_fits(aot_outputs, target):
    out, code = aot_outputs[target]
    assert code == 0, out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in
            ("reduce_1x1", "merged_3x3_map", "head_fusion")]
    assert len(rows) >= 20, out
    assert all(r[-1] == "ok" for r in rows), out
    assert f"{target}: 0 failed" in out


@pytest.mark.parametrize("target,instruction", [("sm_90", "wgmma"), ("sm_80", "mma")])
def test_half_precision_gemms_use_tensor_cores(aot_outputs, target, instruction):
    out, _ = aot_outputs[target]
    gemms = [line.split() for line in out.splitlines()
             if line.split()[:1] in (["reduce_1x1"], ["merged_3x3_map"]) and line.split()[1] in ("fp16", "bf16")]
    from ferfuse.kernels.aot import configurations
    expected = sum(name in ("reduce_1x1", "merged_3x3_map") and sig["y_ptr" if "y_ptr" in sig else "x_ptr"] in ("*fp16", "*bf16")
                   for name, _, sig, _, _ in configurations())
    assert expected >= 4 and len(gemms) == expected, out
    assert all(instruction in row for row in gemms), out
