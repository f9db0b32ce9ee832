"""Faces in, emotions out, on real photographs and on videos written from them."""
import json

import cv2
import numpy as np
import pytest
import torch
from photos import ASTRONAUT_FACE, astronaut, centre_inside, grid, grid_faces, write_rgb, write_video
from PIL import Image

from ferfuse import models
from ferfuse.cli import main
from ferfuse.pipeline import Frame, resolve_labels
from ferfuse.pipeline.sources import read_image


def check_record(record, labels):
    assert list(record["scores"]) == list(labels)
    assert sum(record["scores"].values()) == pytest.approx(1.0, abs=1e-9)
    assert record["label"] == max(record["scores"], key=record["scores"].get)


def test_image_one_face_where_it_is(dan_pipeline, tmp_path):
    records = list(dan_pipeline.predict(write_rgb(tmp_path / "astronaut.png", astronaut())))
    assert len(records) == 1
    assert records[0]["frame"] is None and records[0]["time_s"] is None
    assert centre_inside(records[0]["box"], ASTRONAUT_FACE), records[0]["box"]
    check_record(records[0], dan_pipeline.labels)


def test_scores_are_the_models_softmax(dan_pair, dan_pipeline, tmp_path):
    """The record's scores are the original model's softmax on the preprocessed crop."""
    path = write_rgb(tmp_path / "astronaut.png", astronaut())
    record = next(dan_pipeline.predict(path))
    crop = dan_pipeline.crop(read_image(path), record["box"]).unsqueeze(0)
    with torch.no_grad():
        expected = torch.softmax(dan_pair[0](crop)[0].double(), dim=1)[0]
    got = torch.tensor(list(record["scores"].values()), dtype=torch.float64)
    # softmax of logits that agree within the fp32 budget (random weights give logits of ~1e2,
    # so a 1e-6 relative logit error moves a probability by up to ~1e-4)
    assert torch.allclose(got, expected, atol=1e-3), (got, expected)


def test_preprocessing_is_torchvisions_on_the_same_crop(dan_pipeline, tmp_path):
    """The tensor the model sees equals the upstream evaluation transform of the same crop, the
    image opened as DAN's demo opens it (PIL, convert('RGB'))."""
    from torchvision import transforms

    path = write_rgb(tmp_path / "astronaut.jpg", astronaut())
    box = [170, 55, 281, 170]
    ours = dan_pipeline.crop(read_image(path), box)
    upstream = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                                   transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    theirs = upstream(Image.open(path).convert("RGB").crop(box))
    assert torch.equal(ours, theirs)


def test_video_four_faces_per_frame(dan_pipeline, tmp_path):
    video = write_video(tmp_path / "faces.avi", frames=5, fps=10.0)
    records = list(dan_pipeline.predict(video))
    assert len(records) == 20
    for frame in range(5):
        boxes = [r["box"] for r in records if r["frame"] == frame]
        assert len(boxes) == 4
        assert all(any(centre_inside(b, e) for b in boxes) for e in grid_faces()), boxes
    assert [r["time_s"] for r in records[::4]] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    for r in records:
        check_record(r, dan_pipeline.labels)


def test_every_nth_frame_and_given_boxes(dan_pipeline, tmp_path):
    video = write_video(tmp_path / "faces.avi", frames=7)
    assert sorted({r["frame"] for r in dan_pipeline.predict(video, every=3)}) == [0, 3, 6]
    frame = Frame("mine", astronaut())
    results = list(dan_pipeline.results([frame], boxes=[np.array([ASTRONAUT_FACE])]))
    assert results[0].faces[0].box == list(ASTRONAUT_FACE)


def test_batches_have_fixed_shapes(dan_pipeline):
    """Ragged numbers of faces run at powers of two up to batch_size: the optimised model times
    its executors once per shape, not once per frame's face count."""
    assert [dan_pipeline.padded_size(n) for n in (1, 2, 3)] == [1, 2, 2]
    logits = dan_pipeline.infer(torch.randn(3, 3, 224, 224))
    assert logits.shape == (3, 7)


def test_labels_are_explicit():
    assert resolve_labels(None, 7) == models.LABELS["rafdb"]
    assert resolve_labels(None, 8) == models.LABELS["affectnet8"]
    assert resolve_labels("affectnet7", 7)[0] == "Neutral"
    assert resolve_labels("a,b,c", 3) == ("a", "b", "c")
    with pytest.raises(ValueError, match="5 classes"):
        resolve_labels(None, 5)
    with pytest.raises(ValueError, match="7 labels"):
        resolve_labels("rafdb", 8)


def test_cli_bad_inputs_named_rest_processed(tmp_path, capsys):
    a = astronaut()
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    good = write_rgb(folder / "astronaut.png", a)
    write_rgb(folder / "sub" / "noface.png", np.full((300, 400, 3), 128, np.uint8))   # no face
    assert cv2.imwrite(str(folder / "gray.png"), cv2.cvtColor(a, cv2.COLOR_RGB2GRAY))
    assert cv2.imwrite(str(folder / "rgba.png"), cv2.cvtColor(a, cv2.COLOR_RGB2BGRA))
    assert cv2.imwrite(str(folder / "deep.png"), cv2.cvtColor(a, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    (folder / "notes.txt").write_text("a folder may hold other files")
    video = write_video(tmp_path / "clip.avi", frames=6)
    data = open(video, "rb").read()
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(data[:len(data) // 2])
    unknown = tmp_path / "faces.xyz"
    unknown.write_bytes(b"?")
    missing = tmp_path / "no_such_folder"  # a mistyped folder: no extension, and not there
    out, annotate = tmp_path / "results.jsonl", tmp_path / "annotated"
    status = main(["predict", str(folder), str(truncated), str(unknown), str(missing), "--output", str(out),
                   "--annotate", str(annotate), "--batch-size", "2"])
    assert status == 1
    err = capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by_source = {}
    for r in records:
        by_source.setdefault(r["source"], []).append(r)
    errors = {r["source"]: r["error"] for r in records if "error" in r}
    assert set(errors) == {str(folder / "corrupt.jpg"), str(truncated), str(unknown), str(missing)}
    for source in errors:
        assert f"{source}: " in err
    assert "truncated" in errors[str(truncated)] and "unknown file type" in errors[str(unknown)]
    assert errors[str(missing)] == "no such file or folder"
    assert by_source[str(folder / "sub" / "noface.png")] == [
        {"source": str(folder / "sub" / "noface.png"), "frame": None, "time_s": None, "faces": 0}]
    reference_box = by_source[good][0]["box"]
    for name in ("gray.png", "rgba.png", "deep.png"):  # each converted to RGB, the same face found
        faces = by_source[str(folder / name)]
        assert len(faces) == 1 and centre_inside(faces[0]["box"], ASTRONAUT_FACE), (name, faces)
    assert by_source[str(folder / "deep.png")][0]["box"] == reference_box  # 16-bit → 8-bit exactly
    assert by_source[str(folder / "rgba.png")][0]["box"] == reference_box
    frames = {r["frame"] for r in by_source[str(truncated)] if "box" in r}
    assert frames and max(frames) < 5  # the frames before the cut were processed
    assert "4 failed" in err and "1 files in folders skipped" in err
    written = sorted(p.name for p in annotate.iterdir())
    assert "astronaut.png" in written and "truncated.mp4" in written
    annotated = cv2.imread(str(annotate / "astronaut.png"))
    assert annotated.shape == (512, 512, 3) and not np.array_equal(annotated, cv2.cvtColor(a, cv2.COLOR_RGB2BGR))


def test_cli_csv(tmp_path):
    out = tmp_path / "r.csv"
    assert main(["predict", write_rgb(tmp_path / "a.png", astronaut()), "--output", str(out), "--quiet",
                 "--labels", "affectnet7"]) == 0
    header, row = out.read_text().splitlines()
    assert header.split(",")[-7:] == [f"score_{n}" for n in models.LABELS["affectnet7"]]
    assert row.startswith(str(tmp_path / "a.png"))


def test_grid_photo_all_faces(dan_pipeline):
    boxes = dan_pipeline.detector(grid())
    assert len(boxes) == 4 and all(any(centre_inside(b, e) for b in boxes) for e in grid_faces())


def test_a_phone_photo_is_turned_upright_by_its_exif_orientation(dan_pipeline, tmp_path):
    """A phone stores a portrait photo sideways with EXIF orientation 6 (rotate 90° clockwise to
    show). Decoded as stored, the face lay on its side and the Haar cascade found none."""
    upright = astronaut()
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright)))  # 90° anticlockwise, as the sensor saw it
    exif = stored.getexif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    stored.save(path, quality=95, exif=exif)
    image = read_image(str(path))
    assert image.shape == upright.shape
    assert np.abs(image.astype(int) - upright).mean() < 4  # upright again, up to JPEG's loss
    records = list(dan_pipeline.predict(str(path)))
    assert len(records) == 1 and centre_inside(records[0]["box"], ASTRONAUT_FACE), records


@pytest.mark.parametrize("batch_size", [0, -2])
def test_a_batch_size_under_one_is_refused_before_the_model_is_optimised(batch_size):
    """0 used to read as "the default" (8) and a negative size was refused only after optimize()."""
    from ferfuse.engine import is_optimized
    from ferfuse.pipeline import FacePipeline

    model = models.get("dan").eval()
    with pytest.raises(ValueError, match=rf"batch_size must be ≥ 1, got {batch_size}"):
        FacePipeline(model, detector=None, batch_size=batch_size)
    assert not is_optimized(model)
