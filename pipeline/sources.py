"""What the pipeline reads: image files, folders (recursive), video files and cameras, as a stream
of RGB frames. A source that cannot be read becomes a `Failure` in the stream (named, with the
reason), so one bad file never stops the others and nothing disappears from the output."""
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
CAMERA_PREFIX = "camera:"


@dataclass
class Frame:
    """One RGB uint8 image (H×W×3) to find faces in; `index`/`time_s` are None for still images."""
    source: str
    image: np.ndarray
    index: int | None = None
    time_s: float | None = None


@dataclass
class Failure:
    """A source (or the rest of one) that could not be read, and why."""
    source: str
    message: str

    def record(self) -> dict:
        """Its JSON-ready record, as the predictions write it."""
        return {"source": self.source, "error": self.message}


class UnreadableImage(ValueError):
    pass


def kind_of(source: str) -> str:
    """'camera', 'image', 'video' or 'folder'; ValueError for anything else."""
    if source.startswith(CAMERA_PREFIX):
        return "camera"
    if os.path.isdir(source):
        return "folder"
    ext = Path(source).suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    known = " ".join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))
    raise ValueError(f"unknown file type {ext or '(no extension)'!r}; images and videos are {known}")


def expand(inputs) -> tuple[list[str], list[str]]:
    """Inputs to sources: folders become the images and videos under them (recursively, sorted).
    Returns (sources, files under folders skipped for their extension); explicit files with an
    unknown extension stay in `sources` so that reading them reports the error."""
    sources, skipped = [], []
    for item in inputs:
        item = os.fspath(item)
        if item.startswith(CAMERA_PREFIX) or not os.path.isdir(item):
            sources.append(item)
            continue
        for root, dirs, files in os.walk(item):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                ext = Path(name).suffix.lower()
                (sources if ext in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS else skipped).append(path)
    return sources, skipped


def to_rgb8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """An OpenCV-decoded image (BGR/BGRA/grey, 8 or 16 bit, or float in [0, 1]) as RGB uint8.
    Alpha is dropped, as PIL's convert('RGB') in the upstream demos does; 16-bit maps to 8-bit
    over its full range (x/257), where PIL would clip every value above 255 to white."""
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise UnreadableImage(f"{source}: unsupported pixel type {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise UnreadableImage(f"{source}: unsupported image shape {image.shape}")


def read_image(path: str) -> np.ndarray:
    """The image at `path` as RGB uint8 (see to_rgb8), turned upright by its EXIF orientation as
    cv2.imread turns it (a phone's portrait photo is stored sideways; the Haar cascade finds no
    face in it lying down); UnreadableImage if it cannot be decoded."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UnreadableImage(f"{path}: cannot read ({e.strerror or e})") from e
    # any depth (16-bit) and colour format (grey stays grey), alpha dropped; not IMREAD_UNCHANGED,
    # the one mode in which OpenCV ignores the EXIF orientation
    image = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR) if data.size else None
    if image is None:
        raise UnreadableImage(f"{path}: not a decodable image (corrupt, truncated or not an image)")
    return to_rgb8(image, path)


def _video_frames(source: str, capture: cv2.VideoCapture, every: int, live: bool):
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not live else 0
    index = 0
    try:
        while True:
            # every frame is grabbed, only the sampled ones decoded (read() would decode each, and a
            # retrieve() after it would decode the sampled ones a second time)
            if not capture.grab():
                break
            if index % every == 0:
                ok, image = capture.retrieve()
                if not ok:
                    break
                yield Frame(source, to_rgb8(image, source), index, index / fps if fps > 0 else None)
            index += 1
    finally:
        capture.release()
    if expected and index < expected:
        yield Failure(source, f"truncated or corrupt video: decoded {index} of the {expected} frames its header "
                              f"announces (the frames before were processed)")


def frames(sources, every: int = 1):
    """Frames and Failures from `sources` (expanded: no folders), in order; videos and cameras
    give every `every`-th frame."""
    if every < 1:
        raise ValueError(f"every must be ≥ 1, got {every}")
    for source in sources:
        # a missing path first: a mistyped folder has no extension, which kind_of would report
        if not source.startswith(CAMERA_PREFIX) and not os.path.exists(source):
            yield Failure(source, "no such file or folder")
            continue
        try:
            kind = kind_of(source)
        except ValueError as e:
            yield Failure(source, str(e))
            continue
        if kind == "image":
            try:
                yield Frame(source, read_image(source))
            except UnreadableImage as e:
                yield Failure(source, str(e).removeprefix(f"{source}: "))
            continue
        if kind == "camera":
            spec = source[len(CAMERA_PREFIX):]
            capture = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
        else:
            capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            yield Failure(source, "cannot open the video (corrupt, truncated or an unsupported codec)"
                          if kind == "video" else "cannot open the camera")
            continue
        yield from _video_frames(source, capture, every, live=kind == "camera")
