"""The `ferfuse` command: flops (the acceptance figures), export-onnx, bench's table and plot, env."""
import json
import subprocess
import sys

import pytest
import torch

from ferfuse.bench.flops import flops_report
from ferfuse.bench.report import load_rows, plot, table


def _ferfuse(*args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "ferfuse", *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_flops_reproduces_the_dan_paper_figures():
    rep = json.loads(_ferfuse("flops", "--model", "dan", "--json"))
    assert rep["reference"]["params"] == 19_723_733
    assert round(rep["reference"]["flops"] / 1e9, 4) == 2.2305          # DAN Table 6: 2.23 GFLOPs
    assert 2.06e9 < rep["optimized"]["flops"] < 2.08e9                  # BN folded, branches merged
    # the fused ops are counted through their handles, not skipped
    assert not any(op.startswith("ferfuse::") for op in rep["optimized"]["unsupported_ops"])
    assert rep["reference"]["by_module"]["features"] == pytest.approx(1.8185e9, rel=1e-4)


@pytest.mark.parametrize("name", ["maca_net", "mhan", "hafem"])
def test_flops_works_for_every_registry_model(name):
    rep = flops_report(name)
    assert rep["optimized"]["flops"] < rep["reference"]["flops"]
    assert not any(op.startswith("ferfuse::") for op in rep["optimized"]["unsupported_ops"])


def test_flops_text_report():
    out = _ferfuse("flops", "--model", "dan")
    assert "19,723,733" in out and "2.2305 G" in out and "2.0707 G" in out


def test_export_onnx_command(tmp_path):
    out = _ferfuse("export-onnx", "--model", "dan", str(tmp_path / "dan.onnx"))
    assert "onnxruntime vs PyTorch at batch 1" in out and "at batch 5" in out
    assert (tmp_path / "dan.onnx").stat().st_size > 1_000_000


def test_bench_command_writes_rows_table_and_plot(tmp_path):
    out = _ferfuse("bench", "--device", "cpu", "--model", "dan", "--batch", "1", "--quick",
                   "--providers", "eager", "ferfuse-torch", "--json", str(tmp_path / "b.json"))
    rows = load_rows(tmp_path / "b.json")
    assert {r["provider"] for r in rows} == {"eager", "ferfuse-torch"}
    for r in rows:
        assert {"model", "provider", "batch", "dtype", "device", "device_name", "torch", "triton"} <= set(r)
    assert "ferfuse speed-up" in out and "images/s" in out
    assert "eager" in table(rows)
    png = plot(rows, str(tmp_path / "b.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_env_command():
    out = _ferfuse("env")
    assert "torch" in out and "triton" in out and "onednn" in out


def test_bench_alternate_times_providers_in_rounds(tmp_path):
    out = _ferfuse("bench", "--alternate", "--rounds", "3", "--device", "cpu", "--model", "dan", "--batch", "1",
                   "--providers", "eager", "onnxruntime", "ferfuse-torch", "--json", str(tmp_path / "a.json"))
    rows = load_rows(tmp_path / "a.json")
    assert {r["provider"] for r in rows} == {"eager", "onnxruntime", "ferfuse-torch"}
    for r in rows:
        assert r["mode"] == "alternating" and r["rounds"] == 3 and r["median_ms"] > 0 and r["build_s"] > 0
        assert r["logits_rel_error"] < 1e-4  # every provider agrees with the float64 reference
        assert torch.backends.cpu.get_cpu_capability() in r["device_name"]  # every CPU figure names its ISA
    ferfuse = next(r for r in rows if r["provider"] == "ferfuse-torch")
    assert ferfuse["executor"] in ("onednn", "winograd", "aten")
    assert f"ferfuse-torch ({ferfuse['executor']})" in out and "build s" in out
    # the logits budget of engine/verify.py, from the original fp32 model's own error on these inputs:
    # the larger of its NCHW run (the eager row) and its channels_last run
    assert ferfuse["within_budget"] and ferfuse["logits_rel_error"] <= ferfuse["logits_budget"]
    eager = next(r for r in rows if r["provider"] == "eager")
    assert ferfuse["logits_budget"] >= 4 * eager["logits_rel_error"] + 1e-6 - 1e-15


def test_settle_waits_while_a_thread_of_the_process_is_busy():
    """bench's pause between providers: it waits out a worker that still spins (ONNX Runtime's
    pool spins ~50 ms after a run), and returns at once on an idle process."""
    import threading
    import time

    from ferfuse.bench.providers import settle

    busy_s = 0.3

    def spin():
        end = time.perf_counter() + busy_s
        while time.perf_counter() < end:
            pass

    worker = threading.Thread(target=spin)
    start = time.perf_counter()
    worker.start()
    settle(limit_s=5.0)
    returned = time.perf_counter()
    worker.join()
    # a slice with under 1 ms of CPU time ends it: at most the spin's last millisecond
    assert returned >= start + busy_s - 0.002
    assert settle(limit_s=5.0) < 1.0  # idle: its first slice (10 ms) ends it; 1 s for a loaded machine


def test_demo_prints_speedups_and_the_executor_per_batch_size():
    out = _ferfuse("demo", "--batch", "1", "2", "--runs", "1")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [r[0] for r in rows] == ["1", "2"] and all(r[3].endswith("x") and float(r[4]) < 1e-4 for r in rows)
    assert "(1, 3, 224, 224) at " in out and "(2, 3, 224, 224) at " in out  # what each shape ran on
    assert "budget" in out and "top-1 agreement 100.0%" in out
