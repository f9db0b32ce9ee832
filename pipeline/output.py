"""Where predictions go: JSON lines or CSV records, and annotated images and videos."""
import csv
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from .predict import FrameResult


class RecordWriter:
    """Records to `path` (.jsonl/.json: one JSON object per line; .csv: one row per record, a
    `score_<label>` column per label) or to stdout as JSON lines when `path` is None or '-'."""

    def __init__(self, path: str | None, labels):
        self.labels = list(labels)
        self.format = "csv" if path and path.endswith(".csv") else "jsonl"
        if path and path not in ("-",) and not path.endswith((".csv", ".jsonl", ".json")):
            raise ValueError(f"--output {path}: use a .jsonl or .csv file")
        self.file = open(path, "w", newline="") if path and path != "-" else sys.stdout
        self.csv = None
        if self.format == "csv":
            fields = ["source", "frame", "time_s", "faces", "x1", "y1", "x2", "y2", "label", "error"]
            self.csv = csv.DictWriter(self.file, fields + [f"score_{label}" for label in self.labels])
            self.csv.writeheader()

    def write(self, record: dict):
        if self.csv is None:
            self.file.write(json.dumps(record) + "\n")
            return
        row = {k: record.get(k) for k in ("source", "frame", "time_s", "faces", "label", "error")}
        if "box" in record:
            row.update(zip(("x1", "y1", "x2", "y2"), record["box"]))
            row["faces"] = 1
            row.update({f"score_{k}": v for k, v in record["scores"].items()})
        self.csv.writerow(row)

    def close(self):
        if self.file is not sys.stdout:
            self.file.close()
        else:
            self.file.flush()


def draw(image: np.ndarray, result: FrameResult) -> np.ndarray:
    """A BGR copy of the RGB `image` with each face's box, label and score drawn on it."""
    canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    for face in result.faces:
        x1, y1, x2, y2 = face.box
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 220, 0), thickness)
        text = f"{face.label} {face.scores.get(face.label, 0.0):.2f}"
        scale = max(0.4, (x2 - x1) / 250)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(0, y1 - th - base - 2)
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + base + 2), (0, 220, 0), -1)
        cv2.putText(canvas, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness,
                    cv2.LINE_AA)
    return canvas


class Annotator:
    """Annotated copies in `directory`: `<name>.png` per image, `<name>.mp4` per video or camera
    (at the video's frame rate over `every`). Names are made unique with a counter."""

    def __init__(self, directory: str, every: int = 1):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.every = every
        self.videos: dict[str, cv2.VideoWriter] = {}
        self.written: list[str] = []

    def _path(self, source: str, suffix: str) -> Path:
        stem = Path(source.replace(":", "_")).stem or "frame"
        path, n = self.directory / f"{stem}{suffix}", 1
        while str(path) in self.written or path.exists():
            path, n = self.directory / f"{stem}-{n}{suffix}", n + 1
        self.written.append(str(path))
        return path

    def add(self, result: FrameResult):
        canvas = draw(result.image, result)
        if result.index is None:
            path = self._path(result.source, ".png")
            if not cv2.imwrite(str(path), canvas):
                raise OSError(f"cannot write {path}")
            return
        writer = self.videos.get(result.source)
        if writer is None:
            for source in list(self.videos):  # sources come one after another: close the last one
                self.videos.pop(source).release()
            fps = cv2.VideoCapture(result.source).get(cv2.CAP_PROP_FPS) if os.path.exists(result.source) else 0
            fps = (fps or 25.0) / self.every
            h, w = canvas.shape[:2]
            writer = cv2.VideoWriter(str(self._path(result.source, ".mp4")), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            self.videos[result.source] = writer
        writer.write(canvas)

    def close(self):
        for writer in self.videos.values():
            writer.release()
        self.videos.clear()
