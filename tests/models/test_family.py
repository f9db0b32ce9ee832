"""MACA-Net, MHAN and HAFEM references: registry, sizes, upstream keys (MHAN), golden outputs."""
import pytest
import torch

from ferfuse import models
from ferfuse.models import randomize_batchnorm
from helpers import SHARED, read_keys

GOLDEN = SHARED / "spec" / "golden" / "mhan_7cls_2heads.pth"


def test_registry_lists_the_four_networks():
    assert {"dan", "maca_net", "mhan", "hafem"} <= set(models.list_models())


@pytest.mark.parametrize("name", ["dan", "maca_net", "mhan", "hafem"])
@pytest.mark.parametrize("classes", [7, 8])
def test_builds_and_runs_its_input_size(name, classes, gen):
    model = randomize_batchnorm(models.get(name, num_classes=classes)).eval()
    assert model.input_size == ((3, 112, 112) if name == "mhan" else (3, 224, 224))
    with torch.no_grad():
        out = model(torch.randn(2, *model.input_size, generator=gen))
    assert out[0].shape == (2, classes) and torch.isfinite(out[0]).all()


def test_mhan_parameters_and_upstream_keys():
    model = models.mhan()
    assert sum(p.numel() for p in model.parameters()) == 4_256_541
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == read_keys("mhan_7cls_2heads.txt")


@pytest.mark.skipif(not GOLDEN.exists(), reason="../shared/spec/golden is not beside this checkout")
def test_mhan_reproduces_upstream_outputs():
    golden = torch.load(GOLDEN, weights_only=True)
    model = models.mhan().eval()
    model.load_state_dict(golden["model_state_dict"])
    with torch.no_grad():
        logits, after_ela, heads = model(golden["input"])
    torch.testing.assert_close(logits, golden["logits"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after_ela, golden["features_after_ela"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.stack(heads, 1), golden["heads"], rtol=1e-5, atol=1e-6)


def test_mhan_from_checkpoint_reads_heads_and_classes(tmp_path):
    torch.save({"model_state_dict": models.mhan(num_classes=8, num_heads=3).state_dict()}, tmp_path / "m.pth")
    model = models.MHAN.from_checkpoint(tmp_path / "m.pth")
    assert model.num_head == 3 and model.fc.out_features == 8


def test_maca_net_choices_are_config_fields(tmp_path):
    config = models.MACAConfig(fuse_bias=False, logits_bn=False)
    model = models.maca_net(config=config)
    assert model.cat_head0.fuse.bias is None and model.bn is None
    torch.save(model.state_dict(), tmp_path / "m.pth")
    loaded = models.MACANet.from_checkpoint(tmp_path / "m.pth")
    assert loaded.config == config
    assert 31_000_000 < sum(p.numel() for p in models.maca_net().parameters()) < 33_000_000


def test_hafem_size_matches_the_spec():
    params = sum(p.numel() for p in models.hafem().parameters())
    assert 32_500_000 < params < 33_500_000  # "about 33 M" with the spec's choices
