"""Providers timed alternately in one process: the protocol behind ferfuse's CPU claims.

pytest-benchmark (test_latency.py) times one provider after another; on a shared 2-core machine the
load drifts over minutes, so a ratio of two such medians mixes in the drift. Here every provider is
built once, then each round times a block of calls of each provider in turn (the order rotating
each round), and the medians of the blocks are compared. Before each block, and before each
provider's first call (where ferfuse times its executors for the shape), `settle()` waits until the
previous provider's worker threads are idle, then one untimed call wakes this provider's own.

Every provider's logits are compared with a float64 copy of the same model in the same run.
The JSON has pytest-benchmark's shape ("benchmarks" with "stats" and "extra_info"), so `ferfuse
bench --plot` and report.table read it."""
import copy
import json
import statistics
import time

import torch

from ferfuse import models
from ferfuse.engine import report
from ferfuse.engine.verify import allowed_error, errors, first_tensor, original_error

from .providers import available, build, device_name, settle


def _ort_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def _logits(out) -> torch.Tensor:
    return torch.as_tensor(first_tensor(out)).detach().cpu().double()  # ONNX Runtime gives numpy


def run(model_names, batches, providers, *, rounds: int = 9, device: str = "cpu", min_block_s: float = 0.2,
        log=print) -> list[dict]:
    """Rows of median/IQR per (model, step of `batches`, provider), each with its build time
    (first call included) and its logits' relative error against float64.

    Each ferfuse provider is optimised once per model with the defaults and then meets the batch
    sizes in the order given (say 1 2 8 32 1), as a user's model does; the peers are built per
    batch size, their static-shape best case."""
    import triton

    rows = []
    for name in model_names:
        torch.manual_seed(0)
        base = models.randomize_batchnorm(models.get(name), seed=0).eval().to(device)
        reference = copy.deepcopy(base).double()
        once = {}  # ferfuse provider -> (model, callable, optimize seconds), built at its first batch
        for step, batch in enumerate(batches):
            gen = torch.Generator().manual_seed(1)
            x = torch.randn(batch, *base.input_size, generator=gen).to(device)
            with torch.no_grad():
                ref = _logits(reference(x.double()))
                # the budget of engine/verify.py for these inputs: k × the original fp32 model's own
                # error (the larger of its NCHW and channels_last runs) + floor; a ferfuse row over it
                # is flagged, not hidden
                original_err = original_error(base, (x,), ref)
            logits_budget = allowed_error(original_err, "fp32", logits=True)
            runs, info = {}, {}
            for provider in providers:
                reason = available(provider, device)
                if reason:
                    log(f"  {name} b{batch} {provider}: skipped ({reason})")
                    continue
                settle()  # the provider built before this one: its workers may still spin
                t0 = time.perf_counter()
                if provider.startswith("ferfuse"):
                    if provider not in once:
                        model = copy.deepcopy(base)
                        once[provider] = (model, build(provider, model, x, device, torch.float32),
                                          time.perf_counter() - t0)
                        t0 = time.perf_counter()
                    model, fn, optimize_s = once[provider]
                else:
                    model = copy.deepcopy(base)
                    fn, optimize_s = build(provider, model, x, device, torch.float32), 0.0
                out = fn(x)  # first call: compiles, packs, builds sessions, times executors
                first_call_s = time.perf_counter() - t0
                for _ in range(2):
                    fn(x)
                err = errors(_logits(out), ref)[1]  # the verifier's measure: NaN counts as infinite
                runs[provider] = fn
                info[provider] = {"build_s": optimize_s + first_call_s, "first_call_s": first_call_s,
                                  "logits_rel_error": err}
                if provider.startswith("ferfuse"):  # which convolution executor runs this shape
                    info[provider].update(executor=report(model).executor_for(x.shape), logits_budget=logits_budget,
                                          within_budget=err <= logits_budget)
                    if err > logits_budget:
                        log(f"  {name} b{batch} {provider}: logits error {err:.1e} OVER the budget {logits_budget:.1e} "
                            f"(engine/verify.py's, from the original fp32 model's {original_err:.1e})")
            # calls per block: enough for min_block_s on the slowest provider
            per_call = {}
            for provider, fn in runs.items():
                settle()
                t0 = time.perf_counter()
                fn(x)
                per_call[provider] = time.perf_counter() - t0
            block = max(1, round(min_block_s / max(per_call.values())))
            samples = {p: [] for p in runs}
            order = list(runs)
            for r in range(rounds):
                for provider in order[r % len(order):] + order[:r % len(order)]:
                    fn = runs[provider]
                    settle()  # the previous provider's workers go idle
                    fn(x)  # wakes this provider's workers, warms its caches
                    t0 = time.perf_counter()
                    for _ in range(block):
                        fn(x)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    samples[provider].append((time.perf_counter() - t0) / block)
            for provider, s in samples.items():
                q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
                rows.append({"model": name, "provider": provider, "batch": batch, "step": step, "dtype": "fp32",
                             "device": device, "device_name": device_name(device), "torch": torch.__version__,
                             "triton": triton.__version__, "median_ms": statistics.median(s) * 1e3,
                             "iqr_ms": (q[2] - q[0]) * 1e3, "rounds": len(s), "calls_per_round": block,
                             "onnxruntime": _ort_version(), "mode": "alternating", **info[provider]})
            log(f"  {name} b{batch}: " + ", ".join(f"{r['provider']} {r['median_ms']:.2f} ms" for r in rows
                                                    if r["model"] == name and r["step"] == step))
    return rows


def write_json(rows: list[dict], path: str):
    """pytest-benchmark's shape: report.load_rows reads it back."""
    keep = ("median_ms", "iqr_ms", "rounds")
    data = {"mode": "alternating", "benchmarks": [
        {"name": f"{r['model']}-b{r['batch']}-{r['provider']}",
         "stats": {"median": r["median_ms"] / 1e3, "iqr": r["iqr_ms"] / 1e3, "rounds": r["rounds"]},
         "extra_info": {k: v for k, v in r.items() if k not in keep}} for r in rows]}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
