"""Accuracy of the optimised model on a labelled set, and its agreement with the original model
on every image: verification on the user's own data.

Layouts: an ImageFolder (one sub-folder per label, named as the model's labels, any case, or by
another dataset's name for the same emotion: SYNONYMS); a list file of `path label` lines relative
to the root, as RAF-DB's `list_patition_label.txt`: labels are 1-based indices into the model's
label order or label names, and a listed `x.jpg` missing from the root is looked up as
`x_aligned.jpg` (RAF-DB's aligned crops); or FER2013's CSV, with FERPlus's votes (fer2013.py)."""
import copy
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..engine import is_optimized, revert
from . import fer2013
from .predict import FacePipeline
from .sources import IMAGE_EXTENSIONS, Failure


@dataclass
class Evaluation:
    labels: list[str]
    images: int                       # images with a prediction
    subset: str                       # FER2013's CSV: which rows ("Usage PrivateTest"); else ""
    failed: dict[str, str]            # unreadable images (or CSV rows) and why
    skipped: dict[str, int]           # why images carry no label the model has -> how many
    no_face: list[str]                # with detection: images where none was found (counted wrong)
    accuracy: float
    balanced_accuracy: float          # mean per-class recall over the classes present, as DAN reports
    recall: dict[str, float | None]   # None: no image of that class
    confusion: list[list[int]]        # rows: true label, columns: predicted, the model's label order
    images_per_s: float               # the optimised pipeline alone (reference calls not counted)
    agreement: float | None           # top-1 agreement of optimised and original models
    worst_logit_error: float | None   # max |Δlogit| over the set / max |original logit|
    worst_logit_abs_error: float | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        lines = [f"{self.images} images{f' ({self.subset})' if self.subset else ''}: accuracy {self.accuracy:.4f}, "
                 f"balanced accuracy {self.balanced_accuracy:.4f}, {self.images_per_s:.1f} images/s"]
        if self.agreement is not None:
            lines.append(f"optimised vs original model: top-1 agreement {self.agreement:.4%}, worst logit error "
                         f"{self.worst_logit_error:.2e} relative ({self.worst_logit_abs_error:.2e} absolute)")
        if self.failed:
            lines.append(f"{len(self.failed)} images could not be read: " + "; ".join(
                f"{k}: {v}" for k, v in self.failed.items()))
        if self.skipped:
            lines.append(f"{sum(self.skipped.values())} left out: " + "; ".join(
                f"{why} ({n})" for why, n in self.skipped.items()))
        if self.no_face:
            lines.append(f"{len(self.no_face)} images with no face found (counted as wrong)")
        width = max(len(label) for label in self.labels)
        lines.append("per-class recall:")
        for label in self.labels:
            r = self.recall[label]
            lines.append(f"  {label:<{width}} {'-' if r is None else f'{r:.4f}'}")
        lines.append("confusion matrix (rows: true, columns: predicted):")
        lines.append(" " * (width + 2) + " ".join(f"{label[:6]:>6}" for label in self.labels))
        for label, row in zip(self.labels, self.confusion):
            lines.append(f"  {label:<{width}}" + " ".join(f"{v:>6d}" for v in row))
        return "\n".join(lines)


# one emotion under the names the datasets give it: FER2013's "Angry" is RAF-DB's "Anger",
# AffectNet's "Happy" FERPlus's "happiness"; an ImageFolder of FER2013 has folders named so
SYNONYMS = {"angry": "anger", "happy": "happiness", "sad": "sadness", "surprised": "surprise",
            "fearful": "fear", "disgusted": "disgust"}


def _emotion(name: str) -> str:
    name = name.strip().lower()
    return SYNONYMS.get(name, name)


def label_index(labels, value: str, index_base: int = 1) -> int:
    """A label given by name (any case, any of SYNONYMS) or by index (`index_base`: 1 for RAF-DB's
    list files)."""
    emotions = [_emotion(label) for label in labels]
    if _emotion(value) in emotions:
        return emotions.index(_emotion(value))
    if value.lstrip("-").isdigit() and 0 <= int(value) - index_base < len(labels):
        return int(value) - index_base
    raise ValueError(f"label {value!r} is none of {', '.join(labels)} (or {index_base}..{len(labels) - 1 + index_base})")


def labelled_images(root: str, labels, list_file: str | None = None, index_base: int = 1) -> list[tuple[str, int]]:
    """(path, label index) for every image of the set."""
    root = Path(root)
    if list_file:
        items = []
        for n, line in enumerate(Path(list_file).read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{list_file}:{n}: expected 'path label', got {line!r}")
            path = root / parts[0]
            if not path.exists() and (root / f"{path.stem}_aligned{path.suffix}").exists():
                path = root / f"{path.stem}_aligned{path.suffix}"
            try:
                items.append((str(path), label_index(labels, parts[1], index_base)))
            except ValueError as e:
                raise ValueError(f"{list_file}:{n}: {e}") from None
        return items
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    if not folders:
        raise ValueError(f"{root} has no label sub-folders (ImageFolder layout) and no --list file was given")
    items = []
    for folder in folders:
        try:
            index = label_index(labels, folder.name, index_base=0)
        except ValueError:
            raise ValueError(f"{folder}: folder name is not one of the model's labels ({', '.join(labels)}); "
                             f"pass --labels to name the model's order") from None
        for dirpath, _, files in sorted(os.walk(folder)):
            items += [(os.path.join(dirpath, f), index) for f in sorted(files)
                      if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return items


def _csv_inputs(dataset: fer2013.CsvSet, labels):
    """FER2013's rows as (frames, truth by source, failed, skipped, subset): each dataset label
    mapped to the model's by name (SYNONYMS), and rows whose label the model lacks (FERPlus's
    contempt for a 7-class model) counted out with the reason."""
    frames, truth, skipped = [], {}, dict(dataset.skipped)
    for frame, label in zip(dataset.frames, dataset.labels):
        try:
            truth[frame.source] = label_index(labels, label, index_base=0)
        except ValueError:
            why = f"label {label} is not one of the model's ({', '.join(labels)})"
            skipped[why] = skipped.get(why, 0) + 1
            continue
        frames.append(frame)
    return frames, truth, dict(dataset.failed), skipped, dataset.subset


def evaluate(model: torch.nn.Module, root: str, list_file: str | None = None, detect: bool = False,
             labels=None, batch_size: int | None = None, device: str = "cpu", compare: bool = True,
             index_base: int = 1, usage: str | None = None, ferplus: str | None = None) -> Evaluation:
    """Optimise `model` (if it is not) and evaluate it on the set at `root`; with `compare`, the
    original model runs on the same batches and the two are compared image by image. `root` may
    be FER2013's CSV: `usage` picks its split (default PrivateTest, 'all' for every row) and
    `ferplus` (fer2013new.csv) labels its rows by FERPlus's majority vote."""
    if not Path(root).exists():  # before the model is optimised
        raise ValueError(f"{root}: no such file or folder")
    is_csv = Path(root).suffix.lower() == ".csv" and Path(root).is_file()
    if not is_csv and (usage or ferplus):
        raise ValueError(f"usage and ferplus select rows of FER2013's CSV; {root} is not a .csv file")
    # read (and refused, if malformed) before the model is optimised
    dataset = fer2013.read(root, usage or fer2013.TEST_SPLIT, ferplus) if is_csv else None
    reference = None
    if compare:
        reference = copy.deepcopy(model)
        if is_optimized(reference):
            revert(reference)
    pipe = FacePipeline(model, detector="haar" if detect else None, device=device, batch_size=batch_size,
                        labels=labels, reference=reference)
    if dataset is not None:
        inputs, truth, failed, skipped, subset = _csv_inputs(dataset, pipe.labels)
    else:
        items = labelled_images(root, pipe.labels, list_file, index_base)
        inputs, truth, failed, skipped, subset = [path for path, _ in items], dict(items), {}, {}, ""
    k = len(pipe.labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    no_face, agree, seen = [], 0, 0
    worst_abs, worst_rel = 0.0, 0.0
    t0 = time.perf_counter()
    for result in pipe.results(inputs):
        if isinstance(result, Failure):
            failed[result.source] = result.message
            continue
        true = truth[result.source]
        if not result.faces:
            no_face.append(result.source)
            continue
        face = result.faces[0]  # the largest
        predicted = int(face.logits.argmax())
        confusion[true, predicted] += 1
        seen += 1
        if face.reference_logits is not None:
            agree += int(predicted == int(face.reference_logits.argmax()))
            diff = (face.logits - face.reference_logits).abs().max().item()
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / max(face.reference_logits.abs().max().item(), 1e-12))
    seconds = time.perf_counter() - t0 - pipe.seconds["reference"]
    per_class = confusion.sum(axis=1) + np.array([sum(1 for p in no_face if truth[p] == i) for i in range(k)])
    recall = {label: (float(confusion[i, i] / per_class[i]) if per_class[i] else None)
              for i, label in enumerate(pipe.labels)}
    present = [r for r in recall.values() if r is not None]
    total = seen + len(no_face)
    return Evaluation(
        labels=list(pipe.labels), images=total, subset=subset, failed=failed, skipped=skipped, no_face=no_face,
        accuracy=float(np.trace(confusion) / total) if total else 0.0,
        balanced_accuracy=float(np.mean(present)) if present else 0.0, recall=recall,
        confusion=confusion.tolist(), images_per_s=total / seconds if seconds > 0 else 0.0,
        agreement=agree / seen if reference is not None and seen else None,
        worst_logit_error=worst_rel if reference is not None else None,
        worst_logit_abs_error=worst_abs if reference is not None else None)


def plot_confusion(evaluation: Evaluation, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(evaluation.confusion)
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(cm), 1 + 0.7 * len(cm)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(cm)), evaluation.labels, rotation=45, ha="right")
    ax.set_yticks(range(len(cm)), evaluation.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(cm)):
        for j in range(len(cm)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(f"accuracy {evaluation.accuracy:.3f}, balanced {evaluation.balanced_accuracy:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
