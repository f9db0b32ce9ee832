"""Real photographs for the pipeline tests: scikit-image's astronaut (Eileen Collins, one face)
and videos written from it with OpenCV."""
import cv2
import numpy as np

# where the astronaut's face is in data.astronaut() (512×512), by eye: the box any detector's
# face must fall around
ASTRONAUT_FACE = (175, 60, 275, 165)


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def grid() -> np.ndarray:
    """2×2: the photo and its mirror image, four faces (1024×1024)."""
    a = astronaut()
    return np.ascontiguousarray(np.concatenate([np.concatenate([a, a[:, ::-1]], 1),
                                                np.concatenate([a[:, ::-1], a], 1)], 0))


def grid_faces() -> list[tuple[int, int, int, int]]:
    x1, y1, x2, y2 = ASTRONAUT_FACE
    mirrored = (512 - x2, y1, 512 - x1, y2)
    return [(x1, y1, x2, y2), (mirrored[0] + 512, y1, mirrored[2] + 512, y2),
            (mirrored[0], y1 + 512, mirrored[2], y2 + 512), (x1 + 512, y1 + 512, x2 + 512, y2 + 512)]


def centre_inside(box, expected, slack: int = 15) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return expected[0] + slack <= cx <= expected[2] - slack and expected[1] + slack <= cy <= expected[3] - slack


def write_rgb(path, rgb) -> str:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


def write_video(path, frames: int = 6, fps: float = 10.0, side: int = 1024) -> str:
    g = cv2.resize(grid(), (side, side), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (side, side))
    for _ in range(frames):
        writer.write(cv2.cvtColor(g, cv2.COLOR_RGB2BGR))
    writer.release()
    return str(path)
