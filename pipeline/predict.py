"""FacePipeline: frames in, faces found, one batched optimised model, a label and scores per face.

Reading, detection, cropping and preprocessing run ahead in a background thread; faces from
consecutive frames and files are batched together. Batches have a fixed set of sizes (powers of
two up to `batch_size`, the last one padded): the optimised model times its executors on the first
call of each input shape, so a stream of ragged batches would pay that timing again and again."""
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..engine import is_optimized, optimize, report
from ..models import LABELS
from ..models.base import FERModel
from . import detect, sources
from .sources import Failure, Frame

DEFAULT_BATCH = {"cpu": 8, "cuda": 64}  # CPU: 8 faces a call cost no more per face than 32 (AVX2 EPYC)


def resolve_batch_size(batch_size: int | None, device: str) -> int:
    """Faces per model call: the device's default for None; anything under 1 (0 included, which
    would otherwise read as "the default") is refused before any model is built."""
    if batch_size is None:
        return DEFAULT_BATCH.get(torch.device(device).type, 8)
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    return batch_size


def resolve_labels(labels, num_classes: int) -> tuple[str, ...]:
    """The model's label order: a LABELS key ('rafdb', 'affectnet7', 'affectnet8', 'ferplus',
    'fer2013'), a sequence of names, or None: 7 classes read as RAF-DB's order, 8 as AffectNet's
    (the datasets DAN's checkpoints are published for); any other count needs explicit labels."""
    if labels is None:
        default = {7: "rafdb", 8: "affectnet8"}.get(num_classes)
        if default is None:
            raise ValueError(f"the model has {num_classes} classes: name its labels (labels=[...] or --labels)")
        labels = default
    if isinstance(labels, str):
        if labels in LABELS:
            labels = LABELS[labels]
        else:
            labels = [name.strip() for name in labels.split(",")]
            if len(labels) == 1:
                raise ValueError(f"unknown label set {labels[0]!r}: one of {', '.join(LABELS)} or comma-separated names")
    labels = tuple(labels)
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels ({', '.join(labels)}) for a model with {num_classes} classes")
    return labels


def logits_of(output) -> torch.Tensor:
    """The logits of a FER model's forward: DAN and MHAN return tuples led by them."""
    return output[0] if isinstance(output, (tuple, list)) else output


@dataclass
class Face:
    box: list[int]                      # x1, y1, x2, y2 in the frame's pixels
    label: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    logits: torch.Tensor | None = None            # float32, on the CPU
    reference_logits: torch.Tensor | None = None  # the unoptimised model's, when the pipeline has one


@dataclass
class FrameResult:
    """The faces of one frame (or image); `image` (RGB) only when asked for (annotation)."""
    source: str
    index: int | None
    time_s: float | None
    faces: list[Face]
    image: np.ndarray | None = None

    def records(self) -> list[dict]:
        """One JSON-ready record per face; a frame without faces gets one record with faces: 0."""
        head = {"source": self.source, "frame": self.index, "time_s": self.time_s}
        if not self.faces:
            return [{**head, "faces": 0}]
        return [{**head, "box": face.box, "label": face.label, "scores": face.scores} for face in self.faces]


@dataclass
class _Prepared:
    boxes: np.ndarray
    crops: torch.Tensor     # n×3×H×W, preprocessed
    result: FrameResult
    waiting: int            # faces not yet through the model


_END = object()


class _Raised:
    def __init__(self, error):
        self.error = error


def run_ahead(iterable, depth: int):
    """Iterate `iterable` in a background thread, at most `depth` items ahead; closing the
    generator stops the thread; an exception in it is raised here."""
    q, stop = queue.Queue(maxsize=depth), threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in iterable:
                if not put(item):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Raised(e))
            return
        put(_END)

    thread = threading.Thread(target=work, name="ferfuse-pipeline-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def find_faces(detector, image: np.ndarray, boxes=None) -> np.ndarray:
    """n×4 int64 boxes of the faces in `image` (by `detector`, unless `boxes` are given), empty
    boxes dropped."""
    boxes = np.asarray(detector(image) if boxes is None else boxes, dtype=np.int64).reshape(-1, 4)
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def crop_face(image: np.ndarray, box, transform) -> torch.Tensor:
    """The preprocessed face: the box's pixels, as a PIL image through torchvision's transform."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return transform(Image.fromarray(np.ascontiguousarray(image[y1:y2, x1:x2])))


def input_size_of(model, input_size=None) -> tuple[int, int]:
    """(H, W) the model's eval preprocessing resizes to: the argument, `model.input_size`, else the
    size `optimize()` verified the model on (it probes the usual FER sizes)."""
    if input_size is not None:
        return (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if hasattr(model, "input_size"):
        return tuple(model.input_size[-2:])
    if is_optimized(model) and report(model).example_shape is not None:
        return tuple(report(model).example_shape[-2:])
    raise ValueError("the model names no input_size: pass input_size=(H, W)")


def num_classes_of(model, size, device) -> int:
    fc = getattr(model, "fc", None)
    if isinstance(fc, torch.nn.Linear):
        return fc.out_features
    with torch.no_grad():
        return logits_of(model(torch.zeros(1, 3, *size, device=device))).shape[1]


class FacePipeline:
    """Faces in images, folders, videos and cameras → a label and scores per face.

    `model`: any FER network (ferfuse's or the upstream classes), optimised here with the default
    `optimize()` unless `optimize_model=False`. `detector`: 'haar' (default), None for aligned crops
    (the whole image is the face), or a callable RGB image → n×4 boxes. `labels`: see
    resolve_labels. Preprocessing is the upstream evaluation transform (RGB crop, bilinear resize
    to the model's input size, ImageNet normalisation), applied with torchvision.
    `reference`: a second model (the unoptimised original) run on the same batches, so that each
    Face also carries its logits: verification on the user's own data (`evaluate`)."""

    def __init__(self, model: torch.nn.Module, detector="haar", device: str = "cpu", batch_size: int | None = None,
                 labels=None, input_size=None, optimize_model: bool = True, prefetch: int = 16, reference=None):
        self.device = torch.device(device)
        self.batch_size = resolve_batch_size(batch_size, device)
        self.model = model.eval().to(self.device)
        self.reference = reference.eval().to(self.device) if reference is not None else None
        self.seconds = {"model": 0.0, "reference": 0.0}  # time spent in each model's calls
        if optimize_model and not is_optimized(self.model):
            optimize(self.model)
        self.size = input_size_of(self.model, input_size)
        self.transform = FERModel.preprocess_transform(self.size)
        self.detector = detect.resolve(detector)
        self.labels = resolve_labels(labels, num_classes_of(self.model, self.size, self.device))
        self.prefetch = prefetch

    # -- preparation (background thread) ------------------------------------------------------
    def crop(self, image: np.ndarray, box) -> torch.Tensor:
        return crop_face(image, box, self.transform)

    def prepare(self, frame: Frame, boxes=None, keep_image: bool = False) -> _Prepared:
        boxes = find_faces(self.detector, frame.image, boxes)
        crops = (torch.stack([self.crop(frame.image, b) for b in boxes]) if len(boxes)
                 else torch.empty(0, 3, *self.size))
        result = FrameResult(frame.source, frame.index, frame.time_s, [Face(b.tolist()) for b in boxes],
                             frame.image if keep_image else None)
        return _Prepared(boxes, crops, result, len(boxes))

    def _prepared(self, items, keep_images):
        for item in items:
            yield item if isinstance(item, Failure) else self.prepare(item, keep_image=keep_images)

    # -- inference ------------------------------------------------------------------------------
    def padded_size(self, n: int) -> int:
        """The batch shape `n` faces run at: the next power of two, capped at batch_size."""
        size = 1
        while size < n:
            size *= 2
        return min(size, self.batch_size)

    @torch.no_grad()
    def infer(self, crops: torch.Tensor, model=None) -> torch.Tensor:
        """Logits (float32, CPU) of preprocessed faces by `model` (the pipeline's), run in batches
        of the fixed sizes."""
        model = model or self.model
        out = []
        t0 = time.perf_counter()
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start:start + self.batch_size]
            n = len(chunk)
            padded = self.padded_size(n)
            if padded > n:
                chunk = torch.cat([chunk, chunk[:1].expand(padded - n, -1, -1, -1)])
            logits = logits_of(model(chunk.to(self.device, non_blocking=True)))
            out.append(logits[:n].float().cpu())
        self.seconds["reference" if model is self.reference else "model"] += time.perf_counter() - t0
        return torch.cat(out) if out else torch.empty(0, len(self.labels))

    def classify(self, logits: torch.Tensor) -> list[tuple[str, dict[str, float]]]:
        """(label, scores) per row of logits: softmax in float64, the label of the highest score."""
        scores = torch.softmax(logits.double(), dim=1).tolist()
        return [(self.labels[int(np.argmax(row))], dict(zip(self.labels, row))) for row in scores]

    def _run(self, prepared_faces):
        crops = torch.stack([entry.crops[i] for entry, i in prepared_faces])
        logits = self.infer(crops)
        reference = self.infer(crops, self.reference) if self.reference is not None else [None] * len(logits)
        for (entry, i), (label, scores), logit, ref in zip(prepared_faces, self.classify(logits), logits, reference):
            face = entry.result.faces[i]
            face.logits, face.reference_logits = logit, ref
            face.label, face.scores = label, scores
            entry.waiting -= 1

    def results(self, inputs, every: int = 1, keep_images: bool = False, boxes=None):
        """FrameResult per frame/image and Failure per unreadable source, in input order.

        `inputs`: paths, folders, `camera:N`, or Frame objects; `boxes`, with Frame inputs only, the
        faces to use instead of detecting (one n×4 array per frame)."""
        inputs = list(inputs)
        if boxes is not None:
            items = (self.prepare(f, b, keep_images) for f, b in zip(inputs, boxes))
            live = False
        else:
            listed = [i for i in inputs if not isinstance(i, Frame)]
            if listed and len(listed) != len(inputs):
                raise ValueError("inputs mix Frame objects and paths")
            if listed:
                expanded, _ = sources.expand(listed)
                live = any(s.startswith(sources.CAMERA_PREFIX) for s in expanded)
                items = self._prepared(sources.frames(expanded, every), keep_images)
            else:
                items, live = self._prepared(inputs, keep_images), False
        pending, queued = [], []  # entries in input order; (entry, face index) awaiting the model
        for entry in run_ahead(items, self.prefetch):
            pending.append(entry)
            if isinstance(entry, _Prepared):
                queued += [(entry, i) for i in range(entry.waiting)]
            while len(queued) >= self.batch_size or (live and queued):
                batch, queued = queued[:self.batch_size], queued[self.batch_size:]
                self._run(batch)
            while pending and (isinstance(pending[0], Failure) or pending[0].waiting == 0):
                yield self._done(pending.pop(0))
        if queued:
            self._run(queued)
        for entry in pending:
            yield self._done(entry)

    @staticmethod
    def _done(entry):
        return entry if isinstance(entry, Failure) else entry.result

    def predict(self, inputs, every: int = 1):
        """JSON-ready records, one per face (or per face-less frame, or per failed source)."""
        if isinstance(inputs, (str, os.PathLike, Frame)):
            inputs = [inputs]
        for result in self.results(inputs, every=every):
            if isinstance(result, Failure):
                yield result.record()
            else:
                yield from result.records()
