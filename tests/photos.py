"""Real photographs for the pipeline tests (scikit-image's astronaut, from
ferfuse.bench.photographs), where in them the faces are, aligned-crop-like faces cut from them,
and the upstream evaluation transform the tests count with independently of the pipeline."""
import numpy as np

from ferfuse.bench.photographs import (ASTRONAUT_FACE, astronaut, grid, varied_folder, write_rgb,  # noqa: F401
                                       write_video)


def grid_faces() -> list[tuple[int, int, int, int]]:
    x1, y1, x2, y2 = ASTRONAUT_FACE
    mirrored = (512 - x2, y1, 512 - x1, y2)
    return [(x1, y1, x2, y2), (mirrored[0] + 512, y1, mirrored[2] + 512, y2),
            (mirrored[0], y1 + 512, mirrored[2], y2 + 512), (x1 + 512, y1 + 512, x2 + 512, y2 + 512)]


def centre_inside(box, expected, slack: int = 15) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return expected[0] + slack <= cx <= expected[2] - slack and expected[1] + slack <= cy <= expected[3] - slack


def upstream_transform():
    from torchvision import transforms

    return transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                               transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


def face_variants(n: int) -> list[np.ndarray]:
    """Aligned-crop-like images: the astronaut's face with varied margins, mirrored, brightened."""
    a = astronaut().astype(np.int16)
    out = []
    for i in range(n):
        m = 4 * i
        crop = a[55 - min(m, 50):170 + m, 170 - m:280 + m]
        crop = crop[:, ::-1] if i % 2 else crop
        out.append(np.clip(crop + 9 * (i % 5) - 18, 0, 255).astype(np.uint8))
    return out
