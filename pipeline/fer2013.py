"""FER2013 as it ships: one CSV (`fer2013.csv`) whose rows hold a label (`emotion`, an index into
FER2013's order), the 48×48 grey face as 2,304 space-separated pixel values (`pixels`) and the
split (`Usage`: Training, PublicTest, PrivateTest); and FERPlus, whose `fer2013new.csv` holds ten
annotators' votes for the same rows in the same order, which FERPlus's reader turns into a label by
majority. HAFEM, MACA-Net and MHAN report on these sets; `ferfuse evaluate fer2013.csv` reads them
with no conversion to image files."""
import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..models import LABELS
from .sources import Frame

SIDE = 48
TEST_SPLIT = "PrivateTest"  # the split papers report as FER2013's test set (PublicTest: validation)
FERPLUS_VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                 "unknown", "NF")


@dataclass
class CsvSet:
    """The faces of the rows read, each with its label name (in the dataset's own words), and
    what was left out."""
    frames: list[Frame] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # a row that cannot be read, and why
    skipped: dict[str, int] = field(default_factory=dict)  # why rows carry no label -> how many
    subset: str = ""  # which rows: the split, or all


def _columns(reader: csv.DictReader, path: str, required: tuple[str, ...]) -> dict[str, str]:
    """Column names as the file spells them, by their stripped lower-case names (one FER2013
    release writes `emotion, Usage, pixels` with spaces)."""
    names = {name.strip().lower(): name for name in reader.fieldnames or ()}
    missing = [c for c in required if c.lower() not in names]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} column (columns: {', '.join(reader.fieldnames or ())}); "
                         "FER2013's CSV has emotion, pixels and Usage")
    return names


def majority_label(votes: list[float]) -> str | None:
    """FERPlus's label for one row of ten vote counts (FERPLUS_VOTES), by its reader's majority
    mode: a single vote counts as an outlier and is dropped, and the most-voted name wins where
    it holds more than half the votes left; None where none does. `unknown` and `NF` (not a
    face) can win: the caller leaves those rows out, as FERPlus's reader does."""
    kept = [v if v > 1 else 0.0 for v in votes]
    best = int(np.argmax(kept))
    if kept[best] > 0.5 * sum(kept):
        return FERPLUS_VOTES[best]
    return None


def _ferplus_labels(path: str) -> list[str]:
    """Per row of fer2013new.csv, in order: the FERPlus label, or why the row has none ('no
    majority among the annotators', ...)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        names = _columns(reader, path, ("Image name", *FERPLUS_VOTES))
        out = []
        for n, row in enumerate(reader, 2):
            if not (row[names["image name"]] or "").strip():
                out.append("not in FERPlus (no image name)")
                continue
            try:
                votes = [float(row[names[v.lower()]]) for v in FERPLUS_VOTES]
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{n}: vote counts are not numbers") from None
            label = majority_label(votes)
            out.append("no majority among the annotators" if label is None else
                       "majority unknown" if label == "unknown" else
                       "majority not a face" if label == "NF" else label)
    return out


def _face(pixels: str | None) -> tuple[np.ndarray | None, str]:
    """The 48×48 grey face of a `pixels` cell as RGB (PIL's convert("RGB") of it), or None and why."""
    try:
        values = np.array((pixels or "").split(), dtype=np.int64)
    except ValueError:
        return None, "pixels are not integers"
    if values.size != SIDE * SIDE:
        return None, f"expected {SIDE * SIDE} pixel values ({SIDE}×{SIDE}), got {values.size}"
    if values.min() < 0 or values.max() > 255:
        return None, "pixel values outside 0-255"
    grey = values.astype(np.uint8).reshape(SIDE, SIDE)
    return np.repeat(grey[:, :, None], 3, axis=2), ""


def read(path: str, usage: str = TEST_SPLIT, ferplus: str | None = None) -> CsvSet:
    """The faces of `path` (fer2013.csv) in the split `usage` ('all': every row), labelled by its
    `emotion` column, or with `ferplus` (fer2013new.csv) by FERPlus's majority vote. Read row by
    row (the whole file is 287 MB of text); a row whose label or pixels cannot be read is a
    failure, named by its line."""
    votes = _ferplus_labels(ferplus) if ferplus else None
    name, order = Path(path).name, LABELS["fer2013"]
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        names = _columns(reader, path, ("pixels",) if ferplus else ("emotion", "pixels"))
        split = names.get("usage")
        every = usage == "all" or split is None
        out = CsvSet(subset=("all rows" + ("" if split else " (no Usage column)") if every else f"Usage {usage}")
                     + (", FERPlus majority labels" if ferplus else ""))
        present, rows = set(), 0
        for i, row in enumerate(reader):
            rows += 1
            if not every:
                present.add(row[split])
                if row[split] != usage:
                    continue
            source = f"{name}:{i + 2}"  # its line: the header is line 1
            if votes is not None:
                label = votes[i] if i < len(votes) else "not in FERPlus (no row)"
                if label not in FERPLUS_VOTES:
                    out.skipped[label] = out.skipped.get(label, 0) + 1
                    continue
            else:
                value = (row[names["emotion"]] or "").strip()
                if not value.isdigit() or int(value) >= len(order):
                    out.failed[source] = f"emotion {value!r} is not 0-{len(order) - 1} (FER2013's order)"
                    continue
                label = order[int(value)]
            image, why = _face(row[names["pixels"]])
            if image is None:
                out.failed[source] = why
                continue
            out.frames.append(Frame(source, image))
            out.labels.append(label)
    if not every and usage not in present:
        raise ValueError(f"{path}: no row of Usage {usage!r}; the file has {', '.join(sorted(present))} (or 'all')")
    if votes is not None and len(votes) != rows:
        raise ValueError(f"{ferplus} has {len(votes)} rows and {path} {rows}: FERPlus's votes follow fer2013.csv "
                         "row for row")
    return out
