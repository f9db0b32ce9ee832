"""ONNX export for serving engines, checked by onnx.checker and ONNX Runtime before it returns.

An optimised model exports its folded, merged graph: every fused unit switches to its decomposed
form (standard aten ops on the folded weights, no ferfuse:: or oneDNN ops), which the TorchScript
exporter translates to standard ONNX operators; a plain model exports as it is."""
import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .optimize import STATE_ATTR, default_example_inputs, _device_of
from .verify import errors

# Output names of the known forward contracts, logits first.
OUTPUT_NAMES = {3: ["logits", "features", "heads"], 2: ["logits", "embedding"], 1: ["logits"]}


@dataclass
class ExportReport:
    path: str
    opset: int
    output_names: list[str]
    checks: list[dict] = field(default_factory=list)  # per batch size: max abs and relative logits error

    def __str__(self):
        rows = [f"exported {self.path} (opset {self.opset}; outputs {', '.join(self.output_names)})"]
        rows += [f"  onnxruntime vs PyTorch at batch {c['batch']}: logits max abs err {c['abs_error']:.2e}, "
                 f"rel err {c['rel_error']:.2e}" for c in self.checks]
        return "\n".join(rows)


@contextlib.contextmanager
def decomposed(model: nn.Module):
    """Fused units compute with standard aten ops while inside (for export and FLOP counting)."""
    state = model.__dict__.get(STATE_ATTR)
    units = state.units if state is not None else []
    before = [u.decomposed for u in units]
    for u in units:
        u.decomposed = True
    try:
        yield model
    finally:
        for u, b in zip(units, before):
            u.decomposed = b


@contextlib.contextmanager
def reference_path(model: nn.Module):
    """Fused units step aside (original forwards run) while inside."""
    state = model.__dict__.get(STATE_ATTR)
    units = state.units if state is not None else []
    for u in units:
        u.enabled = False
    try:
        yield model
    finally:
        for u in units:
            u.enabled = True


@contextlib.contextmanager
def _mha_fastpath(enabled: bool):
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _flat_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    flat = []
    for item in out:
        flat += _flat_outputs(item)
    return flat


def _output_names(out) -> list[str]:
    if isinstance(out, torch.Tensor):
        return ["logits"]
    names = OUTPUT_NAMES.get(len(out), ["logits"] + [f"output_{i}" for i in range(1, len(out))])
    flat = []
    for name, item in zip(names, out):
        if isinstance(item, torch.Tensor):
            flat.append(name)
        else:
            flat += [f"{name}_{i}" for i in range(len(item))]
    return flat


def export_onnx(model: nn.Module, path, *, example_inputs=None, dynamic_batch: bool = True, opset: int | None = None,
                verify: bool = True, rtol: float = 1e-4, batches=(1, 5)) -> ExportReport:
    """Export `model` (optimised or plain, in eval mode) to ONNX at `path`; run onnx.checker; with
    `verify`, compare ONNX Runtime's logits with the PyTorch reference path on fresh inputs at each
    of `batches` and raise if the relative error is over `rtol`."""
    import onnx

    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx() takes a torch.nn.Module, got {type(model).__name__}")
    device = _device_of(model)
    if example_inputs is None:
        example_inputs = default_example_inputs(model, device, batch=2)
    elif isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    opset = opset or 17
    was_training = model.training
    model.eval()
    try:
        # the TransformerEncoderLayer fast path is one fused aten op that ONNX cannot express
        with torch.no_grad(), decomposed(model), _mha_fastpath(False):
            names = _output_names(model(*example_inputs))
            axes = {n: {0: "batch"} for n in ["input", *names]} if dynamic_batch else None
            torch.onnx.export(model, example_inputs, str(path), dynamo=False, input_names=["input"],
                              output_names=names, dynamic_axes=axes, opset_version=opset)
    finally:
        model.train(was_training)
    onnx.checker.check_model(str(path))
    report = ExportReport(str(path), opset, names)
    if verify:
        _verify_with_onnxruntime(model, report, example_inputs[0], batches if dynamic_batch else
                                 (example_inputs[0].shape[0],), rtol)
    return report


def _verify_with_onnxruntime(model, report, example, batches, rtol):
    import onnxruntime as ort

    session = ort.InferenceSession(report.path, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(12345)
    for batch in batches:
        x = torch.randn((batch, *example.shape[1:]), generator=gen).to(example.dtype)
        got = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
        with torch.no_grad(), reference_path(model):
            ref = _flat_outputs(model(x.to(example.device)))[0].cpu()
        abs_err, rel_err = errors(got, ref)
        report.checks.append({"batch": batch, "abs_error": abs_err, "rel_error": rel_err})
        if not rel_err <= rtol:
            raise RuntimeError(f"ONNX Runtime's logits at batch {batch} differ from PyTorch's by {rel_err:.2e} "
                               f"relative (tolerance {rtol:.0e}): {report.path} is not a faithful export")
