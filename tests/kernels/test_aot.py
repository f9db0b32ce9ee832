"""Ahead-of-time compilation of every kernel configuration for sm_80 and sm_90 on this machine
(no GPU needed). The list is derived from the launchers (each op's domain, recorded through
registry.launch), so the test compares the compiled rows with that list. It catches what the
interpreter forgives, checks shared memory against the target's limit, and that the fp16/bf16
GEMMs use tensor cores. Both targets compile in parallel
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


def _listed():
    """(kernel, pointer dtype) of every configuration the launchers pick, derived here in-process."""
    from ferfuse.kernels.aot import configurations, kernel_name

    return [(kernel_name(c), next(t for _, t in c.signature if t.startswith("*")).lstrip("*"))
            for c in configurations()]


def _rows(out):
    names = {name for name, _ in _listed()}
    return [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in names]


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
def test_every_configuration_compiles_and_fits(aot_outputs, target):
    """Every configuration of every declared op compiled, each within the target's shared memory."""
    out, code = aot_outputs[target]
    assert code == 0, out
    rows = _rows(out)
    assert sorted((r[0], r[1]) for r in rows) == sorted(_listed()), out
    assert {r[0] for r in rows} >= {"reduce_1x1", "merged_3x3_map", "head_fusion", "squeeze_excite",
                                    "channel_stats", "spatial_gate", "maca_fusion", "ela", "coordinate",
                                    "max_fusion"}, out
    assert all(r[-1] == "ok" for r in rows), out
    assert f"{target}: 0 failed" in out


@pytest.mark.parametrize("target,instruction", [("sm_90", "wgmma"), ("sm_80", "mma")])
def test_half_precision_gemms_use_tensor_cores(aot_outputs, target, instruction):
    out, _ = aot_outputs[target]
    gemms = [r for r in _rows(out) if r[0] in ("reduce_1x1", "merged_3x3_map") and r[1] in ("fp16", "bf16")]
    expected = sum(name in ("reduce_1x1", "merged_3x3_map") and dtype in ("fp16", "bf16") for name, dtype in _listed())
    assert expected >= 4 and len(gemms) == expected, out
    assert all(instruction in row for row in gemms), out
