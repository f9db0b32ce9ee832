"""The peers a benchmark compares, each built from the same seeded model: a provider takes
(model, example input, device, dtype) and returns a callable that runs one forward.

eager, torch.compile (default mode), torch.compile-max-autotune, torch.compile-freezing (CPU:
inductor with frozen weights, the CPU peer of engine.md), onnxruntime (CPU, or CUDA when its
provider is installed), ferfuse-torch, ferfuse-triton (CUDA). The ferfuse providers run the
default `optimize()`, as a user would: no example input at the timed batch."""
import os
import platform
import tempfile
import time

import torch

PROVIDERS = ["eager", "torch.compile", "torch.compile-max-autotune", "torch.compile-freezing", "onnxruntime",
             "ferfuse-torch", "ferfuse-triton"]


SETTLE_SLICE_S = 0.01
SETTLE_LIMIT_S = 1.0


def settle(limit_s: float = SETTLE_LIMIT_S, slice_s: float = SETTLE_SLICE_S) -> float:
    """Sleep until this process's threads are idle: a slice of `slice_s` in which they used under a
    tenth of it in CPU time, or `limit_s` in all. Returns the seconds waited. A worker pool that
    spins after its work would otherwise take a core from whoever runs next: ONNX Runtime's spins
    ~50 ms after each run (46-50 ms of CPU time in a 50-500 ms sleep after a HAFEM run on the 2-core
    Zen 4, where torch's OpenMP workers spin ~10 ms), so the fixed 50 ms pause this replaced ended
    as the spinning did, and a provider built right after ONNX Runtime timed its first call on one
    core and a half."""
    start = time.perf_counter()
    while True:
        cpu = time.process_time()
        time.sleep(slice_s)
        waited = time.perf_counter() - start
        if time.process_time() - cpu < 0.1 * slice_s or waited >= limit_s:
            return waited


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (a VM may report only "AMD EPYC"),
    from /proc/cpuinfo; the architecture where that cannot be read."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def device_name(device: str) -> str:
    """The machine a timing came from, for every result row: the CPU, its ISA and the threads."""
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"


def available(provider: str, device: str) -> str | None:
    """None when `provider` can run on `device` here, else the reason it cannot."""
    if provider == "ferfuse-triton" and device != "cuda":
        return "ferfuse-triton times Triton kernels on a GPU (on CPU they only run under the interpreter)"
    if provider == "torch.compile-freezing" and device != "cpu":
        return "freezing is the CPU inductor peer"
    if provider == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDA execution provider here"
    return None


def build(provider: str, model: torch.nn.Module, example: torch.Tensor, device: str, dtype: torch.dtype):
    """A no-grad callable running `model` through `provider`; the model is already on `device`."""
    if provider == "eager":
        return _no_grad(model if dtype == torch.float32 else model.to(dtype))
    if provider.startswith("torch.compile"):
        torch._dynamo.reset()
        if provider == "torch.compile-freezing":
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True
        mode = "max-autotune" if provider.endswith("max-autotune") else None
        compiled = torch.compile(model.to(dtype), mode=mode)
        return _no_grad(compiled)
    if provider == "onnxruntime":
        return _onnxruntime(model, example, device)
    if provider in ("ferfuse-torch", "ferfuse-triton"):
        # what a user gets: the default optimize(), no example at the timed batch (the executor is
        # chosen per input shape on its first call, which the warm-up makes)
        precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
        model.optimize(backend=provider.removeprefix("ferfuse-"), precision=precision)
        return _no_grad(model)
    raise ValueError(f"unknown provider {provider!r}; known: {PROVIDERS}")


def _no_grad(fn):
    def run(x):
        with torch.no_grad():
            return fn(x)
    return run


def _onnxruntime(model, example, device):
    import onnxruntime as ort

    from ferfuse.engine.export import export_onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    with tempfile.TemporaryDirectory(prefix="ferfuse-bench-") as folder:  # the session holds the model
        path = os.path.join(folder, "model.onnx")
        export_onnx(model, path, example_inputs=example, verify=False)
        session = ort.InferenceSession(path, options, providers=providers)
    name = session.get_inputs()[0].name

    def run(x):
        return session.run(None, {name: x.detach().cpu().numpy()})[0]
    return run
