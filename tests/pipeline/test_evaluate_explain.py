"""`ferfuse evaluate` against an accuracy computed here independently, and `ferfuse explain`'s
maps on the optimised path against the original modules'."""
import copy
import json

import numpy as np
import pytest
import torch
from photos import astronaut, face_variants, upstream_transform, write_rgb
from PIL import Image

from ferfuse import models
from ferfuse.cli import main
from ferfuse.engine.verify import budget
from ferfuse.pipeline import FacePipeline
from ferfuse.pipeline.evaluate import evaluate, plot_confusion
from ferfuse.pipeline.explain import attention_maps, explain

@pytest.fixture(scope="module")
def labelled(tmp_path_factory, dan_pair):
    """An ImageFolder of 12 face images (folder names in mixed case). Random weights predict
    nearly one class for every face, so the truth is set from the original model's predictions:
    7 images under the label it predicts, 5 under another, for an accuracy that is neither 0 nor 1."""
    root = tmp_path_factory.mktemp("set")
    names = models.LABELS["rafdb"]
    t = upstream_transform()
    truth = []
    for i, image in enumerate(face_variants(12)):
        with torch.no_grad():
            predicted = int(dan_pair[0](t(Image.fromarray(image)).unsqueeze(0))[0].argmax())
        label = names[predicted if i < 7 else (predicted + 1 + i % 3) % len(names)]
        label = label.upper() if i % 2 else label.lower()
        (root / label).mkdir(exist_ok=True)
        truth.append((write_rgb(root / label / f"{i:02d}.png", image), label))
    return root, truth


def independent_accuracy(model, truth):
    """Accuracy and balanced accuracy from the original model, preprocessing as upstream does."""
    labels = [label.lower() for label in models.LABELS["rafdb"]]
    t = upstream_transform()
    batch = torch.stack([t(Image.open(path).convert("RGB")) for path, _ in truth])
    with torch.no_grad():
        predicted = model(batch)[0].argmax(1).tolist()
    true = [labels.index(label.lower()) for _, label in truth]
    correct = [p == y for p, y in zip(predicted, true)]
    recalls = [np.mean([c for c, y in zip(correct, true) if y == k]) for k in sorted(set(true))]
    return float(np.mean(correct)), float(np.mean(recalls)), predicted


def test_evaluate_matches_an_independent_count(dan_pair, labelled):
    original, _ = dan_pair
    root, truth = labelled
    accuracy, balanced, predicted = independent_accuracy(original, truth)
    assert 0 < accuracy < 1 and 0 < balanced < 1
    result = evaluate(copy.deepcopy(original), str(root), batch_size=2)
    assert result.images == 12 and not result.failed
    assert result.accuracy == pytest.approx(accuracy)
    assert result.balanced_accuracy == pytest.approx(balanced)
    assert result.agreement == 1.0
    assert result.worst_logit_error < 1e-4  # fp32 against fp32 on the same crops (the budget is verified per unit)
    assert sum(map(sum, result.confusion)) == 12
    assert np.bincount(predicted, minlength=7).tolist() == np.array(result.confusion).sum(0).tolist()


def test_evaluate_list_file_raf_style(dan_pair, labelled, tmp_path):
    root, truth = labelled
    images = tmp_path / "aligned"
    images.mkdir()
    lines = []
    for i, (path, label) in enumerate(truth[:5]):
        Image.open(path).save(images / f"test_{i:04d}_aligned.png")
        lines.append(f"test_{i:04d}.png {models.LABELS['rafdb'].index(label.capitalize()) + 1}")  # 1-based
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    accuracy, _, _ = independent_accuracy(dan_pair[0], truth[:5])
    out = tmp_path / "cm.png"
    result = evaluate(copy.deepcopy(dan_pair[0]), str(images), list_file=str(tmp_path / "list.txt"), batch_size=2)
    assert result.images == 5 and result.accuracy == pytest.approx(accuracy)
    plot_confusion(result, str(out))
    assert out.stat().st_size > 0


def test_evaluate_cli_json(labelled, capsys):
    root, truth = labelled
    assert main(["evaluate", str(root), "--json", "--batch-size", "2", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    accuracy, _, _ = independent_accuracy(_cli_model(), truth)
    assert result["accuracy"] == pytest.approx(accuracy) and result["agreement"] == 1.0


def _cli_model():
    """The model the CLI builds without --checkpoint (seeded)."""
    from ferfuse.pipeline.cli import load_model

    return load_model("dan", None, quiet=True)


def test_evaluate_unknown_folder_label(tmp_path, dan_pair):
    (tmp_path / "joy").mkdir()
    write_rgb(tmp_path / "joy" / "a.png", face_variants(1)[0])
    with pytest.raises(ValueError, match="joy.*not one of the model's labels"):
        evaluate(copy.deepcopy(dan_pair[0]), str(tmp_path), batch_size=2)


def _maps64(model, x):
    return attention_maps(copy.deepcopy(model).double(), x.double())


@pytest.mark.parametrize("name", ["dan", "maca_net", "mhan", "hafem"])
def test_explain_maps_optimised_equal_original_within_budget(name, tmp_path):
    torch.manual_seed(0)
    original = models.randomize_batchnorm(models.get(name), seed=1).eval()
    if name == "maca_net":  # random gate weights saturate the sigmoid at 0/1, where any path agrees
        for head in (m for n, m in original.named_children() if n.startswith("cat_head")):
            head.sa.gate[0].weight.data.mul_(1e-3)
    pipe = FacePipeline(copy.deepcopy(original), batch_size=2)
    x = torch.stack([pipe.crop(astronaut(), box) for box in ([170, 55, 281, 170], [150, 40, 300, 190])])
    fused, plain, exact = attention_maps(pipe.model, x), attention_maps(original, x), _maps64(original, x)
    assert fused.shape == plain.shape and fused.shape[1] == {"dan": 4, "maca_net": 4, "mhan": 2, "hafem": 1}[name]
    assert (fused.std(dim=(2, 3)) > 0).all()  # real maps, not constants
    err = lambda m: ((m.double() - exact).norm() / exact.norm()).item()  # noqa: E731
    k, floor, _ = budget("fp32", "winograd")
    assert err(fused) <= k * err(plain) + floor, (err(fused), err(plain))


def test_explain_cli_writes_png(tmp_path, capsys):
    image = write_rgb(tmp_path / "astronaut.png", astronaut())
    out = tmp_path / "heads.png"
    assert main(["explain", image, "--out", str(out), "--batch-size", "2"]) == 0
    assert out.stat().st_size > 10_000 and "4 maps" in capsys.readouterr().out
    blank = write_rgb(tmp_path / "blank.png", np.full((200, 200, 3), 90, np.uint8))
    assert main(["explain", blank, "--out", str(tmp_path / "none.png"), "--quiet"]) == 1


def test_explain_returns_crop_and_maps(dan_pipeline):
    (e,) = explain(dan_pipeline, astronaut())
    assert e.crop.shape[:2] == (e.box[3] - e.box[1], e.box[2] - e.box[0])
    assert e.maps.shape == (4, 7, 7) and sum(e.scores.values()) == pytest.approx(1.0)
