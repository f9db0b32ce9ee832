"""`ferfuse evaluate` on FER2013's CSV and FERPlus's votes, against a count made here from the
same faces through the upstream preprocessing, and against the same faces as an ImageFolder named
the way FER2013's image release names its folders (angry, happy, ...: RAF-DB says Anger,
Happiness). The faces are real photographs (scikit-image's astronaut), grey at 48×48 as FER2013's."""
import copy
import csv
import json

import cv2
import numpy as np
import pytest
import torch
from photos import face_variants, upstream_transform
from PIL import Image

from ferfuse import models
from ferfuse.cli import main
from ferfuse.pipeline import fer2013
from ferfuse.pipeline.evaluate import evaluate

FER_ORDER = models.LABELS["fer2013"]
# FER2013's index -> RAF-DB's, written out by hand (not through the code's synonyms)
TO_RAFDB = {0: 5, 1: 2, 2: 1, 3: 3, 4: 4, 5: 0, 6: 6}


def grey_faces(n: int) -> list[np.ndarray]:
    return [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
            for f in face_variants(n)]


def predicted_rafdb(model, faces) -> list[int]:
    """The original model's class per grey face, preprocessed as upstream (PIL's RGB of the grey)."""
    t = upstream_transform()
    batch = torch.stack([t(Image.fromarray(f).convert("RGB")) for f in faces])
    with torch.no_grad():
        return model(batch)[0].argmax(1).tolist()


def write_fer2013(path, rows):
    """rows: (emotion, grey 48×48 face or a pixel string, usage)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for emotion, face, usage in rows:
            w.writerow([emotion, face if isinstance(face, str) else " ".join(map(str, face.ravel())), usage])
    return path


@pytest.fixture(scope="module")
def fer_set(tmp_path_factory, dan_pair):
    """10 faces: 8 PrivateTest rows (5 labelled as the original model predicts them, 3 as another
    class, so accuracy is 5/8) and 2 Training rows the default split leaves out; and the 8 test
    faces again as an ImageFolder with FER2013's folder names."""
    root = tmp_path_factory.mktemp("fer2013")
    faces = grey_faces(10)
    from_rafdb = {v: k for k, v in TO_RAFDB.items()}
    predicted = predicted_rafdb(dan_pair[0], faces)
    emotions = [from_rafdb[p] if i < 5 else (from_rafdb[p] + 1 + i % 3) % 7 for i, p in enumerate(predicted)]
    usages = ["PrivateTest"] * 8 + ["Training"] * 2
    path = write_fer2013(root / "fer2013.csv", zip(emotions, faces, usages))
    folder = root / "images"
    for i, (emotion, face) in enumerate(zip(emotions[:8], faces)):
        (folder / FER_ORDER[emotion].lower()).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / FER_ORDER[emotion].lower() / f"{i}.png"), face)
    return path, folder, emotions, predicted


def test_fer2013_csv_matches_an_independent_count_and_the_image_folder(dan_pair, fer_set):
    path, folder, emotions, predicted = fer_set
    result = evaluate(copy.deepcopy(dan_pair[0]), str(path), batch_size=2)
    assert result.images == 8 and result.subset == "Usage PrivateTest" and not result.failed and not result.skipped
    confusion = np.zeros((7, 7), dtype=int)
    for emotion, p in zip(emotions[:8], predicted[:8]):
        confusion[TO_RAFDB[emotion], p] += 1
    assert result.confusion == confusion.tolist()
    assert result.accuracy == pytest.approx(5 / 8) and result.agreement == 1.0
    as_folder = evaluate(copy.deepcopy(dan_pair[0]), str(folder), batch_size=2)
    assert as_folder.confusion == result.confusion and as_folder.images == 8


def test_fer2013_rows_that_cannot_be_read_are_named(tmp_path):
    face = grey_faces(1)[0]
    path = write_fer2013(tmp_path / "fer2013.csv", [
        (3, face, "PublicTest"), (9, face, "PublicTest"), (3, " ".join(["7"] * 2303), "PublicTest"),
        (3, "1 2 x", "PublicTest"), (3, " ".join(["256"] * 2304), "PublicTest"), (0, face, "Training")])
    dataset = fer2013.read(str(path), "PublicTest")
    assert dataset.labels == ["Happy"] and dataset.subset == "Usage PublicTest"
    assert dataset.failed == {"fer2013.csv:3": "emotion '9' is not 0-6 (FER2013's order)",
                              "fer2013.csv:4": "expected 2304 pixel values (48×48), got 2303",
                              "fer2013.csv:5": "pixels are not integers",
                              "fer2013.csv:6": "pixel values outside 0-255"}
    grey = dataset.frames[0].image
    assert grey.shape == (48, 48, 3) and (grey == face[:, :, None]).all()
    assert len(fer2013.read(str(path), "all").frames) == 2
    with pytest.raises(ValueError, match="no row of Usage 'PrivateTest'; the file has PublicTest, Training"):
        fer2013.read(str(path))
    (tmp_path / "test.csv").write_text("pixels\n" + " ".join(["1"] * 2304) + "\n")  # Kaggle's unlabelled test file
    with pytest.raises(ValueError, match="no emotion column"):
        fer2013.read(str(tmp_path / "test.csv"))
    with pytest.raises(ValueError, match="not a .csv file"):
        evaluate(torch.nn.Identity(), str(tmp_path), usage="PublicTest")
    (tmp_path / "fer2013new.csv").write_text(f"Usage,Image name,{','.join(fer2013.FERPLUS_VOTES)}\n"
                                             f"PublicTest,fer0000000.png,{','.join(['1'] * 10)}\n")
    with pytest.raises(ValueError, match="has 1 rows and .* 6: FERPlus's votes follow fer2013.csv row for row"):
        fer2013.read(str(path), "PublicTest", ferplus=str(tmp_path / "fer2013new.csv"))


def test_evaluate_cli_says_what_is_wrong_with_the_set(tmp_path, capsys):
    path = write_fer2013(tmp_path / "fer2013.csv", [(3, grey_faces(1)[0], "Training")])
    assert main(["evaluate", str(path), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (f"ferfuse evaluate: {path}: no row of Usage 'PrivateTest'; the file "
                                               "has Training (or 'all')")
    assert main(["evaluate", str(tmp_path / "missing"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"ferfuse evaluate: {tmp_path / 'missing'}: no such file or folder"


@pytest.mark.parametrize("votes,label", [
    ([0, 10, 0, 0, 0, 0, 0, 0, 0, 0], "happiness"),
    ([0, 0, 0, 0, 2, 1, 0, 7, 0, 0], "contempt"),  # the single disgust vote dropped: 7 of 9
    ([6, 0, 1, 2, 0, 0, 0, 0, 1, 0], "neutral"),
    ([1, 0, 0, 0, 0, 0, 8, 0, 0, 1], "fear"),
    ([3, 0, 0, 5, 0, 0, 0, 0, 2, 0], None),  # 5 of 10 is not more than half
    ([4, 0, 0, 4, 2, 0, 0, 0, 0, 0], None),  # a tie
    ([0, 1, 4, 0, 1, 0, 0, 0, 4, 0], None),  # 4 of 8 after the single votes go
    ([0, 0, 0, 0, 0, 0, 0, 1, 9, 0], "unknown"),
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], "NF"),
])
def test_ferplus_majority_follows_its_reader(votes, label):
    assert fer2013.majority_label(votes) == label


def test_ferplus_labels_through_the_cli(tmp_path, capsys):
    faces = grey_faces(5)
    path = write_fer2013(tmp_path / "fer2013.csv", [(0, f, "PrivateTest") for f in faces] + [(0, faces[0], "Training")])
    votes = [[0, 10, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 2, 1, 0, 7, 0, 0], [3, 0, 0, 5, 0, 0, 0, 0, 2, 0],
             [0, 0, 0, 0, 0, 0, 0, 0, 0, 10], [6, 0, 1, 2, 0, 0, 0, 0, 1, 0], [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]]
    names = ["fer0000000.png", "fer0000001.png", "fer0000002.png", "", "fer0000004.png", "fer0000005.png"]
    with open(tmp_path / "fer2013new.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Usage", "Image name", *fer2013.FERPLUS_VOTES])
        for name, row in zip(names, votes):
            w.writerow(["PrivateTest", name, *row])
    assert main(["evaluate", str(path), "--ferplus", str(tmp_path / "fer2013new.csv"), "--json", "--quiet",
                 "--batch-size", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    # kept: happiness and neutral; out: no majority, no image name, and contempt (DAN has 7 classes)
    assert result["images"] == 2 and sum(map(sum, result["confusion"])) == 2
    assert result["subset"] == "Usage PrivateTest, FERPlus majority labels"
    assert result["skipped"] == {
        "no majority among the annotators": 1, "not in FERPlus (no image name)": 1,
        "label contempt is not one of the model's (Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral)": 1}
    rows = np.array(result["confusion"]).sum(1)
    assert rows[3] == 1 and rows[6] == 1  # Happiness and Neutral in RAF-DB's order
