"""ONNX export of optimised models written outside ferfuse: checker, ONNX Runtime within 1e-4."""
import onnx
import pytest
import torch

import ferfuse
from ferfuse.engine import export_onnx
from ferfuse.models import randomize_batchnorm
from helpers import UpstreamDAN


def test_optimized_upstream_dan_exports_and_matches(tmp_path, gen):
    model = randomize_batchnorm(UpstreamDAN(num_class=7, num_head=4), seed=6).eval()
    ferfuse.optimize(model)
    rep = export_onnx(model, tmp_path / "dan.onnx")
    assert [c["batch"] for c in rep.checks] == [1, 5]
    assert all(c["rel_error"] <= 1e-4 for c in rep.checks)
    graph = onnx.load(str(tmp_path / "dan.onnx")).graph
    assert [o.name for o in graph.output][0] == "logits"
    # the folded graph: no BatchNormalization left in the heads, only standard ONNX operators
    ops = {n.op_type for n in graph.node}
    assert "BatchNormalization" not in ops and all(n.domain in ("", "ai.onnx") for n in graph.node)
    # the exported model answers like the optimised PyTorch model on new inputs
    import onnxruntime as ort
    x = torch.randn(3, 3, 224, 224, generator=gen)
    got = ort.InferenceSession(rep.path, providers=["CPUExecutionProvider"]).run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x)[0]
    assert ((torch.from_numpy(got) - ref).norm() / ref.norm()).item() <= 1e-4


def test_export_after_optimize_leaves_the_fused_path_in_place(tmp_path):
    model = randomize_batchnorm(UpstreamDAN(num_head=2)).eval()
    ferfuse.optimize(model)
    export_onnx(model, tmp_path / "m.onnx", verify=False)
    state = model.__dict__["_ferfuse_state"]
    assert all(u.enabled and not u.decomposed for u in state.units)


def test_a_wrong_export_is_refused(tmp_path, monkeypatch):
    from ferfuse.engine import export as export_module

    model = randomize_batchnorm(UpstreamDAN(num_head=1)).eval()
    real = export_module._flat_outputs

    def skewed(out):  # make the PyTorch side disagree: the check must notice
        flat = real(out)
        return [flat[0] * 1.5] + flat[1:]

    monkeypatch.setattr(export_module, "_flat_outputs", skewed)
    with pytest.raises(RuntimeError, match="not a faithful export"):
        export_onnx(model, tmp_path / "m.onnx")
