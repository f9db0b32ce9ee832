"""optimize() on MACA-Net, MHAN and HAFEM: logits within 1e-5 relative of a float64 reference
(torch backend, fp32), the report naming what was fused; on the triton backend every unit runs
its kernels within the engine's fp32 budget."""
import copy

import pytest
import torch
import torch.nn as nn

import ferfuse
from ferfuse import models
from ferfuse.kernels.compat import triton_runs_on
from ferfuse.models import randomize_batchnorm
from helpers import SHARED, UpstreamDAN, assert_close, fp32_budget

EXPECTED = {
    "maca_net": ("maca_heads", ["cat_head0", "cat_head1", "cat_head2", "cat_head3", "fc", "bn"]),
    "mhan": ("mhan_attention", ["ela", "cat_head0", "cat_head1", "Linear", "fc"]),
    "hafem": ("cbam", ["cbam"]),
}


def _reference_logits(model, x):
    ref = copy.deepcopy(model).double()
    ferfuse.revert(ref)
    with torch.no_grad():
        return ref(x.double())[0]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_torch_backend_matches_float64(name, gen):
    torch.manual_seed(0)
    model = randomize_batchnorm(models.get(name), seed=4).eval()
    x = torch.randn(3, *model.input_size, generator=gen)
    ref = _reference_logits(model, x)
    model.optimize(backend="torch")
    rep = ferfuse.report(model)
    pattern, modules = EXPECTED[name]
    assert [e.modules for e in rep.fused if e.pattern == pattern] == [modules], str(rep)
    assert pattern not in [e.pattern for e, _ in rep.reverted]
    assert any(e.pattern == "conv_bn" for e in rep.fused)  # the trunk's BNs are folded too
    with torch.no_grad():
        logits = model(x)[0]
    assert_close(logits, ref, 1e-5, f"{name} logits")
    if name == "hafem":  # its token mixer and projection run on the tuned runners too
        fused = {e.pattern: e.modules for e in rep.fused}
        assert fused["transformer_layer"] == ["transformer"] and fused["conv"] == ["proj"], str(rep)
        assert not any("TransformerEncoderLayer" in n for n in rep.notes)


def test_optimized_mhan_keeps_the_upstream_outputs():
    golden = SHARED / "spec" / "golden" / "mhan_7cls_2heads.pth"
    if not golden.exists():
        pytest.skip("../shared/spec/golden is not beside this checkout")
    data = torch.load(golden, weights_only=True)
    model = models.mhan().eval()
    model.load_state_dict(data["model_state_dict"])
    model.optimize()
    with torch.no_grad():
        logits, after_ela, heads = model(data["input"])
    assert_close(logits, data["logits"], 1e-5, "logits")
    assert_close(after_ela, data["features_after_ela"], 1e-5, "features after ELA")
    assert_close(torch.stack(heads, 1), data["heads"], 1e-5, "head maps")


def test_mhan_heads_reject_a_wrong_spatial_size():
    model = models.mhan().eval().optimize(verify=False)
    with pytest.raises(ValueError, match=r"224×224 cannot pass through MHAN"):  # the model's guard
        with torch.no_grad():
            model(torch.randn(1, 3, 224, 224))
    from ferfuse.engine.fused import unit_of
    with pytest.raises(ValueError, match=r"112×112"):  # the fused unit's own check, called directly
        unit_of(model).forward(torch.randn(1, 512, 14, 14))


@pytest.mark.skipif(not triton_runs_on(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
                    reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("name", list(EXPECTED))
def test_triton_backend_runs_kernels_for_every_unit(name, gen):
    """Every attention unit of the family runs its Triton kernels (DAN: test_triton_backend.py):
    nothing is noted as left on torch ops, and the logits hold the engine's fp32 budget against
    float64 on the verification inputs themselves."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = randomize_batchnorm(models.get(name), seed=5).eval().to(device)
    x = torch.randn(2, *model.input_size, generator=gen).to(device)
    ref = _reference_logits(model, x)
    model.optimize(backend="triton", example_inputs=x)
    rep = ferfuse.report(model)
    pattern, modules = EXPECTED[name]
    assert [e.modules for e in rep.fused if e.pattern == pattern] == [modules], str(rep)
    assert not rep.reverted, str(rep)
    assert not any("Triton" in n or "torch ops" in n for n in rep.notes), rep.notes
    with torch.no_grad():
        assert_close(model(x)[0].cpu(), ref.cpu(), rep.logits_budget, f"{name} logits")


class Normalised(nn.Module):
    """A deployment's wrapper: ImageNet normalisation, then the network, returning its logits."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, images):
        return self.network((images - self.mean) / self.std)[0]


@pytest.mark.parametrize("name", ["dan", "maca_net", "mhan"])
def test_a_network_inside_a_wrapper_has_its_heads_fused(name, gen):
    """The heads' units took the model optimised as the network: inside a wrapper (or a
    LightningModule's attribute) they went unfused, without a word in the report."""
    network = UpstreamDAN(num_head=2) if name == "dan" else models.get(name)
    wrapper = Normalised(randomize_batchnorm(network, seed=5)).eval()
    size = (3, 112, 112) if name != "maca_net" else (3, 224, 224)
    reference = copy.deepcopy(wrapper).double()
    ferfuse.optimize(wrapper, example_inputs=(torch.rand(2, *size, generator=gen),))
    rep = ferfuse.report(wrapper)
    pattern = {"dan": "dan_heads", "maca_net": "maca_heads", "mhan": "mhan_attention"}[name]
    heads = [e.modules for e in rep.fused if e.pattern == pattern]
    assert len(heads) == 1 and "network.cat_head0" in heads[0] and not rep.reverted, str(rep)
    x = torch.rand(3, *size, generator=gen)
    with torch.no_grad():
        got, fp32, expected = wrapper(x), ferfuse.revert(copy.deepcopy(wrapper))(x), reference(x.double())
    assert_close(got, expected, fp32_budget(fp32, expected), f"wrapped {name} logits")
    assert ferfuse.engine.attention_maps(wrapper, x) is None  # the network's input is not `x`
