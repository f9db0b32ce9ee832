"""optimize() on DAN and on DAN-structured models written outside ferfuse (torch backend, CPU).

Tolerances (engine.md): fp32 torch backend, logits within 1e-5 relative of a float64 reference
(the fused path re-orders fp32 reductions: folded weights, merged kernels, channels_last convs).
"""
import copy
import warnings

import pytest
import torch
import torch.nn as nn

import ferfuse
from ferfuse import models
from ferfuse.engine import executors
from ferfuse.models import randomize_batchnorm
from helpers import UpstreamDAN, assert_close

LOGITS_RTOL = 1e-5


def _float64_logits(model, x):
    ref = copy.deepcopy(model).double().eval()
    ferfuse.revert(ref)
    with torch.no_grad():
        return ref(x.double())[0]


def _head_names(k):
    return [f"cat_head{i}" for i in range(k)]


def _fused_dan_entry(model):
    entries = [e for e in ferfuse.report(model).fused if e.pattern == "dan_heads"]
    assert len(entries) == 1, str(ferfuse.report(model))
    return entries[0]


@pytest.mark.parametrize("build,heads,classes,size", [
    (lambda: models.dan(num_classes=7, num_heads=4), 4, 7, 224),
    (lambda: UpstreamDAN(num_class=7, num_head=4), 4, 7, 224),
    (lambda: UpstreamDAN(num_class=7, num_head=1), 1, 7, 224),
    (lambda: UpstreamDAN(num_class=8, num_head=4), 4, 8, 224),
    (lambda: UpstreamDAN(num_class=7, num_head=2), 2, 7, 160),
], ids=["ferfuse-dan", "upstream-4heads", "upstream-1head", "upstream-8classes", "upstream-160px"])
def test_optimize_matches_float64_reference(build, heads, classes, size, gen):
    torch.manual_seed(0)
    model = randomize_batchnorm(build(), seed=1).eval()
    x = torch.randn(3, 3, size, size, generator=gen)
    ref = _float64_logits(model, x)
    model.eval()
    assert ferfuse.optimize(model) is model
    entry = _fused_dan_entry(model)
    assert entry.modules == _head_names(heads) + ["fc", "bn"]
    rep = ferfuse.report(model)
    assert rep.verified and rep.logits_rel_error <= LOGITS_RTOL and rep.top1_agreement == 1.0
    # the heads are never reverted; a trunk unit may be, if channels_last convs round it past 1e-6
    assert "dan_heads" not in [e.pattern for e, _ in rep.reverted]
    with torch.no_grad():
        logits, feats, head_out = model(x)
    assert logits.shape == (3, classes) and head_out.shape == (3, heads, 512)
    assert feats.shape == (3, 512, size // 32, size // 32)
    assert_close(logits, ref, LOGITS_RTOL, "logits")
    assert (logits.argmax(1) == ref.argmax(1)).all()


def test_report_lists_fused_and_skipped_and_prints():
    model = randomize_batchnorm(models.dan()).eval().optimize()
    text = str(ferfuse.report(model))
    assert "dan_heads" in text and "cat_head0, cat_head1, cat_head2, cat_head3, fc, bn" in text
    assert "verified" in text
    assert "[ferfuse]" in repr(model) and "[fused: dan_heads]" in repr(model) and "[folded" in repr(model)


def test_state_dict_unchanged_and_revert_is_bit_exact(gen):
    model = randomize_batchnorm(models.dan()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        original = model(x)
    model.optimize()
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    ferfuse.revert(model)
    assert not ferfuse.engine.is_optimized(model)
    with torch.no_grad():
        restored = model(x)
    assert all(torch.equal(a, b) for a, b in zip(restored, original))
    assert "ferfuse" not in repr(model) and "folded" not in repr(model)


def test_checkpoint_saved_after_optimize_loads_into_plain_model(tmp_path, gen):
    model = randomize_batchnorm(models.dan()).eval().optimize()
    torch.save({"model_state_dict": model.state_dict()}, tmp_path / "c.pth")
    plain = models.DAN.from_checkpoint(tmp_path / "c.pth").eval()
    x = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        assert_close(model(x)[0], plain(x)[0], LOGITS_RTOL, "logits")


def test_new_weights_after_optimize_are_followed(gen):
    model = randomize_batchnorm(models.dan(), seed=1).eval().optimize()
    other = randomize_batchnorm(models.dan(), seed=2).eval()
    x = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        stale = model(x)[0].clone()
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        fresh = model(x)[0]
        expected = other(x)[0]
    assert_close(fresh, expected, LOGITS_RTOL, "logits after load_state_dict")
    assert not torch.allclose(fresh, stale)
    with torch.no_grad():  # an in-place edit (as an optimizer step does) is followed too
        model.cat_head2.sa.conv_3x3[0].weight.mul_(1.5)
        other.cat_head2.sa.conv_3x3[0].weight.mul_(1.5)
        assert_close(model(x)[0], other(x)[0], LOGITS_RTOL, "logits after an in-place update")
        # a parameter replaced, and one's tensor swapped through `.data` (no version bump): followed
        conv, twin = model.cat_head1.sa.conv1x1[0], other.cat_head1.sa.conv1x1[0]
        conv.weight = nn.Parameter(conv.weight * 0.5)
        twin.weight = nn.Parameter(twin.weight * 0.5)
        assert_close(model(x)[0], other(x)[0], LOGITS_RTOL, "logits after a replaced parameter")
        bn, twin = model.cat_head1.sa.conv_3x1[1], other.cat_head1.sa.conv_3x1[1]
        bn.running_var.data = bn.running_var * 2
        twin.running_var.data = twin.running_var * 2
        assert_close(model(x)[0], other(x)[0], LOGITS_RTOL, "logits after a tensor swapped through .data")


def test_train_mode_trains_the_original_parameters(gen):
    model = randomize_batchnorm(models.dan()).eval().optimize()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3, 224, 224, generator=gen)
    logits, _, _ = model(x)
    logits.sum().backward()
    grads = [p.grad for p in model.cat_head0.sa.conv_3x3[0].parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    before = model.fc.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.fc.weight)
    model.eval()  # the fused path then computes with the stepped weights
    reference = copy.deepcopy(model)
    ferfuse.revert(reference)
    with torch.no_grad():
        assert_close(model(x)[0], reference(x)[0], LOGITS_RTOL, "logits after a training step")


def test_model_handed_over_in_training_mode(gen):
    """A fresh nn.Module is in training mode, and users forget .eval(): optimize() with no
    arguments still builds and verifies, in eval mode (its input dry run used to fail in the heads'
    BatchNorm1d at batch 1, and its baseline run overwrote BatchNorm's running statistics), leaves
    each module's mode and every tensor as it found them, warns that training mode runs the
    original forward, and after .eval() the fused path runs."""
    model = randomize_batchnorm(UpstreamDAN(num_head=4))
    model.features[4].eval()  # a mixed-mode model: each module's own mode is kept
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.training
    with pytest.warns(UserWarning, match="UpstreamDAN is in training mode"):
        ferfuse.optimize(model)
    # verification ran in eval mode: no BatchNorm's running statistics were overwritten
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and model.features[3].training and not model.features[4].training
    assert not any(m.training for m in model.features[4].modules())
    rep = ferfuse.report(model)
    assert "dan_heads" in [e.pattern for e in rep.fused] and not rep.reverted
    x = torch.randn(2, 3, 224, 224, generator=gen)
    ref = _float64_logits(model, x)
    model.eval()
    with torch.no_grad():
        assert_close(model(x)[0], ref, LOGITS_RTOL, "logits after .eval()")
    assert executors.shape_key(x.shape) in rep.executor_by_shape  # the guarded, fused path ran
    with torch.no_grad():
        model(x[:1])  # batch 1 in eval mode: the guard's dry run passes the heads' BatchNorm1d


def test_over_tolerance_unit_is_reverted_or_raises(monkeypatch):
    from ferfuse.engine.patterns.dan_heads import FusedDANHeads

    real = FusedDANHeads.forward

    def wrong(self, x):  # a deliberately broken fused path: the guard must catch it
        logits, heads = real(self, x)
        return logits * 1.01, heads

    monkeypatch.setattr(FusedDANHeads, "forward", wrong)
    model = randomize_batchnorm(models.dan()).eval()
    with pytest.raises(RuntimeError, match="dan_heads"):
        ferfuse.optimize(model, strict=True)
    assert not ferfuse.engine.is_optimized(model)
    ferfuse.optimize(model)
    rep = ferfuse.report(model)
    assert [e.pattern for e, _ in rep.reverted] == ["dan_heads"]
    assert "dan_heads" not in [e.pattern for e in rep.fused]
    assert rep.logits_rel_error <= LOGITS_RTOL  # the rest stays fused and correct


def test_nothing_to_fuse_warns():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.warns(UserWarning, match="nothing in Sequential matched"):
        ferfuse.optimize(model)
    assert ferfuse.report(model).fused == []


def test_variant_head_is_skipped_with_reason(gen):
    model = randomize_batchnorm(UpstreamDAN(num_head=2)).eval()
    model.cat_head1.sa.conv_3x3[0].dilation = (2, 2)  # a layer variant the algebra does not cover
    model.cat_head1.sa.conv_3x3[0].padding = (2, 2)
    x = torch.randn(2, 3, 224, 224, generator=gen)
    ref = _float64_logits(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ferfuse.optimize(model)  # the trunk is still fused, so no warning
    rep = ferfuse.report(model)
    reasons = {s.module: s.reason for s in rep.skipped}
    assert "dilation (2, 2)" in reasons["cat_head1"]
    assert "dan_heads" not in [e.pattern for e in rep.fused]
    with torch.no_grad():
        assert_close(model(x)[0], ref, LOGITS_RTOL, "logits")


def test_bad_options_raise():
    model = models.dan().eval()
    with pytest.raises(ValueError, match="backend"):
        ferfuse.optimize(model, backend="cuda")
    with pytest.raises(ValueError, match="precision 'fp16' is for CUDA"):
        ferfuse.optimize(model, precision="fp16")
    with pytest.raises(TypeError):
        ferfuse.optimize("not a model")
