"""engine/memory.py: with glibc's thresholds raised, a freed block over 32 MB serves the next call
instead of being mapped and page-faulted afresh. Each case runs in a fresh process: the setting is
process-wide and, once made, stays."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from ferfuse.engine import memory, optimize, report

ROOT = Path(__file__).resolve().parents[2]
BLOCK_FLOATS = 1 << 25  # 128 MB: over glibc's 32 MB mmap-threshold ceiling
ROUNDS = 8
WARM_UP = 8

# allocates and fills a 128 MB tensor ROUNDS times after WARM_UP first ones, and prints the minor
# page faults of those rounds and the note. With the blocks kept, the first few rounds fault as the
# heap grows, then none: torch asks for 64-byte alignment, which a freed block of the same size is a
# few bytes short of once Python's small objects sit next to it, so the heap settles on a few blocks
# (1 to 6 rounds in six runs here)
PROBE = f"""
import resource, sys, torch
from ferfuse.engine import memory
note = memory.keep_large_blocks() if sys.argv[1] == "keep" else "-"
for _ in range({WARM_UP}):
    torch.empty({BLOCK_FLOATS}).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({ROUNDS}):
    torch.empty({BLOCK_FLOATS}).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(note)
"""

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the thresholds are glibc's")


def _probe(mode: str, **env) -> tuple[int, str]:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True,
                          env={**environment, **env}, timeout=120)
    assert done.returncode == 0, done.stderr
    faults, note = done.stdout.strip().splitlines()[-2:]
    return int(faults), note


@glibc_only
def test_large_blocks_are_reused_not_faulted_afresh():
    kept, note = _probe("keep")
    plain, _ = _probe("plain")
    # plain: each round maps 128 MB afresh, 32,768 faults of 4 KB pages (64 where the kernel gives
    # every mapping huge pages); kept: at most two rounds of eight still settling the heap
    per_round = plain / ROUNDS
    assert per_round >= 64, plain
    assert kept <= 2 * per_round + 100, (kept, plain, note)
    assert note.startswith("memory: glibc's malloc keeps blocks up to 1 GiB"), note


@glibc_only
@pytest.mark.parametrize("env", [{"MALLOC_MMAP_THRESHOLD_": "1000000"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}])
def test_thresholds_the_environment_sets_are_left_alone(env):
    faults, note = _probe("keep", **env)
    name = next(iter(env)) if "MALLOC" in next(iter(env)) else "glibc.malloc.trim_threshold"
    assert note == f"memory: glibc's malloc thresholds left as the environment sets them ({name})"
    assert faults >= ROUNDS * 64, faults  # not raised: still mapped afresh


def _small_cpu_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()


def test_the_report_says_what_was_done_to_malloc():
    rep = report(optimize(_small_cpu_model(), example_inputs=torch.randn(2, 3, 16, 16)))
    assert sum(n.startswith("memory: ") for n in rep.notes) == 1, rep.notes
    rep = report(optimize(_small_cpu_model(), example_inputs=torch.randn(2, 3, 16, 16), reuse_memory=False))
    assert not any(n.startswith("memory: ") for n in rep.notes), rep.notes


def test_elsewhere_than_glibc_malloc_is_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("", ""))
    assert memory._apply() == "memory: malloc is not glibc's (Darwin, an unnamed C library): left as it is"
