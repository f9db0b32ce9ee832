"""Real photographs for the benchmarks and tests: scikit-image's astronaut (Eileen Collins, one
face) and folders of images made from it and its companions."""
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


def write_rgb(path, rgb) -> str:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


def write_video(path, frames: int = 6, side: int = 1024, fps: float = 10.0, pan: int = 0) -> str:
    """An MJPG video of the four-face grid at side×side, moving `pan` pixels a frame to the right."""
    faces = cv2.resize(grid(), (side, side), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (side, side))
    for i in range(frames):
        writer.write(cv2.cvtColor(np.roll(faces, pan * i, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()
    return str(path)


def varied_folder(root, n: int = 200, seed: int = 0) -> list[str]:
    """`n` images under `root` (in two sub-folders): crops of the astronaut photo at random
    places and scales around her face, every other one mirrored, and every tenth one of
    scikit-image's other photographs (a cat, a cup of coffee, the grayscale cameraman: no face or a
    small one). Returns the paths written."""
    from skimage import data

    rng = np.random.default_rng(seed)
    others = [data.chelsea(), data.coffee(), data.camera()]
    a, (fx1, fy1, fx2, fy2) = astronaut(), ASTRONAUT_FACE
    paths = []
    for i in range(n):
        folder = root / ("b" if i % 2 else "a")
        folder.mkdir(parents=True, exist_ok=True)
        if i % 10 == 9:
            image = others[(i // 10) % len(others)]
        else:  # a crop that keeps the whole face, 260 to 512 pixels a side
            side = int(rng.integers(260, 513))
            x = int(rng.integers(max(0, fx2 - side), min(fx1, 512 - side) + 1))
            y = int(rng.integers(max(0, fy2 - side), min(fy1, 512 - side) + 1))
            image = a[y:y + side, x:x + side]
            if i % 2:
                image = image[:, ::-1]
        path = folder / f"{i:04d}.png"
        if image.ndim == 2:
            assert cv2.imwrite(str(path), image)
            paths.append(str(path))
        else:
            paths.append(write_rgb(path, np.ascontiguousarray(image)))
    return paths
