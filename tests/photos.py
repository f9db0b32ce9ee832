"""Real photographs for the pipeline tests (scikit-image's astronaut, from
ferfuse.bench.photographs) and where in them the faces are."""
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
