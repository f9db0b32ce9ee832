"""DAN reference: upstream keys, parameter count, forward contract, checkpoints, registry."""
import pickle

import pytest
import torch

from ferfuse import models
from ferfuse.models import DAN, CheckpointError, randomize_batchnorm
from helpers import UpstreamDAN, read_keys


def test_parameters_and_state_dict_keys_match_upstream():
    model = models.dan()
    assert sum(p.numel() for p in model.parameters()) == 19_723_733
    expected = read_keys("dan_7cls_4heads.txt")
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert len(got) == 275
    assert got == expected


def test_trunk_parameters():
    assert sum(p.numel() for p in models.dan().features.parameters()) == 11_176_512


def test_registry():
    assert "dan" in models.list_models()
    model = models.get("dan", num_classes=8, num_heads=2)
    assert isinstance(model, DAN) and model.fc.out_features == 8 and model.num_head == 2
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        models.get("nope")


@pytest.mark.parametrize("num_heads", [1, 4])
def test_forward_returns_logits_features_heads(num_heads, gen):
    model = randomize_batchnorm(models.dan(num_classes=7, num_heads=num_heads)).eval()
    x = torch.randn(3, 3, 224, 224, generator=gen)
    with torch.no_grad():
        logits, feats, heads = model(x)
    assert logits.shape == (3, 7) and feats.shape == (3, 512, 7, 7) and heads.shape == (3, num_heads, 512)
    if num_heads > 1:  # heads are log-softmaxed over the head axis: exp sums to 1
        torch.testing.assert_close(heads.exp().sum(1), torch.ones(3, 512), rtol=1e-5, atol=1e-5)


def test_head_initialisation_follows_upstream():
    head = models.dan().cat_head0.requires_grad_(False)
    assert float(head.sa.conv_3x3[0].bias.abs().max()) == 0.0
    assert float(head.sa.conv_3x3[1].weight.min()) == 1.0
    assert abs(float(head.ca.attention[0].weight.std()) - 0.001) < 2e-4


def _upstream_checkpoint(tmp_path, wrapper, prefix=""):
    torch.manual_seed(3)
    upstream = randomize_batchnorm(UpstreamDAN(num_class=7, num_head=4), seed=3).eval()
    state = {prefix + k: v for k, v in upstream.state_dict().items()}
    path = tmp_path / "dan.pth"
    torch.save(wrapper(state), path)
    return upstream, path


@pytest.mark.parametrize("wrapper,prefix", [
    (lambda sd: {"iter": 10, "model_state_dict": sd, "optimizer_state_dict": {}}, ""),
    (lambda sd: {"state_dict": sd}, "module."),
    (lambda sd: sd, ""),
])
def test_from_checkpoint_loads_upstream_formats(tmp_path, gen, wrapper, prefix):
    upstream, path = _upstream_checkpoint(tmp_path, wrapper, prefix)
    model = DAN.from_checkpoint(path).eval()
    x = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        for a, b in zip(model(x), upstream(x)):
            assert torch.equal(a, b)


def test_from_checkpoint_reports_class_count_mismatch(tmp_path):
    _, path = _upstream_checkpoint(tmp_path, lambda sd: {"model_state_dict": sd})
    with pytest.raises(CheckpointError, match=r"class count: the checkpoint has 7 classes.*the model 8"):
        DAN.from_checkpoint(path, num_classes=8)


def test_from_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    sd = models.dan().state_dict()
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        DAN.from_checkpoint(path)
    assert "missing keys (1): fc.bias" in str(err.value) and "unexpected keys (1): extra.weight" in str(err.value)


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/ferfuse_pwned_by_checkpoint",))


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    import os

    marker = "/tmp/ferfuse_pwned_by_checkpoint"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model_state_dict": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        DAN.from_checkpoint(path)
    assert not os.path.exists(marker)
