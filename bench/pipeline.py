"""End-to-end faces/s on a video: ferfuse's pipeline against DAN's demo loop, same frames.

DAN's `demo.py` (upstream) per image: PIL RGB → BGR → `detectMultiScale` with OpenCV's defaults
on the full frame → per face a PIL crop, `Resize((224, 224))`, `ToTensor`, ImageNet `Normalize`,
one eager forward of batch 1 (the demo classifies faces[0]; here every face, one at a time).
ferfuse: `FacePipeline` with its defaults (Haar search at ≤512 px, reading and detection in a
background thread, faces of consecutive frames batched, optimised model). A third row runs the
pipeline with the demo's detector settings, to tell the detector's share from the model's.

    python -m ferfuse.bench.pipeline --frames 40 --rounds 3 --json bench/results/cpu-avx2-pipeline.json

The video is written from scikit-image's astronaut photograph: four faces per frame (the photo and
its mirror image in a 2×2 grid), panning a few pixels a frame. Each loop runs once untimed on the
first frames (the optimised model times its executors per batch shape on its first calls); then
`rounds` rounds each time every loop over the whole video, one loop after the other, so that each
round's ratios compare loops run side by side (a shared 2-core machine drifts by tens of percent
over minutes). The speed-up reported is the median of the rounds' ratios; each round's is kept."""
import argparse
import copy
import os
import platform
import statistics
import tempfile
import time

import cv2
import numpy as np
import torch
from PIL import Image

from ferfuse import models
from ferfuse.pipeline import FacePipeline, HaarDetector
from ferfuse.pipeline.sources import frames as read_frames

from .photographs import write_video
from .providers import device_name
from .report import publish


DEMO = "dan-demo-loop (eager, one face at a time)"


def demo_loop(model, video: str, limit: int | None = None) -> list[dict]:
    """DAN's demo.py per frame, every face in turn (eager, batch 1)."""
    transform = models.FERModel.preprocess_transform(224)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    labels = models.LABELS["rafdb"]
    out = []
    capture = cv2.VideoCapture(video)
    index = 0
    while limit is None or index < limit:
        ok, bgr = capture.read()
        if not ok:
            break
        img0 = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))       # demo: Image.open(...).convert("RGB")
        faces = cascade.detectMultiScale(cv2.cvtColor(np.asarray(img0), cv2.COLOR_RGB2BGR))
        for x, y, w, h in faces:
            img = transform(img0.crop((x, y, x + w, y + h))).view(1, 3, 224, 224)
            with torch.set_grad_enabled(False):
                logits, _, _ = model(img)
            out.append({"frame": index, "box": [int(x), int(y), int(x + w), int(y + h)],
                        "label": labels[int(logits.argmax(1))]})
        index += 1
    capture.release()
    return out


def pipeline_loop(pipe: FacePipeline, video: str, limit: int | None = None) -> list[dict]:
    items = read_frames([video])
    if limit is not None:
        items = (f for i, f in zip(range(limit), items))
    return [{"frame": r.index, "box": face.box, "label": face.label}
            for r in pipe.results(list(items) if limit is not None else [video]) for face in r.faces]


def timed(fn) -> tuple[list, float]:
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def label_agreement(reference: list[dict], other: list[dict], min_iou: float = 0.5) -> tuple[int, int]:
    """(faces of `other` matched to a `reference` face of the same frame by IoU, of those the
    ones with the same label)."""
    matched = same = 0
    for face in other:
        best = max((r for r in reference if r["frame"] == face["frame"]), key=lambda r: iou(r["box"], face["box"]),
                   default=None)
        if best is not None and iou(best["box"], face["box"]) >= min_iou:
            matched += 1
            same += best["label"] == face["label"]
    return matched, same


def run(frames: int = 40, side: int = 1024, warmup_frames: int = 4, seed: int = 0, rounds: int = 3) -> dict:
    torch.manual_seed(seed)
    eager = models.randomize_batchnorm(models.dan(), seed=seed).eval()
    optimised = copy.deepcopy(eager)
    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(os.path.join(tmp, "faces.avi"), frames, side, fps=25.0, pan=3)
        t0 = time.perf_counter()
        pipe = FacePipeline(optimised)  # the default optimize(), verified
        build_s = time.perf_counter() - t0
        demo_pipe = FacePipeline(optimised, detector=HaarDetector(scale_factor=1.1, min_neighbors=3, min_size=24,
                                                                  max_side=None))
        loops = {DEMO: lambda limit=None: demo_loop(eager, video, limit),
                 "ferfuse-pipeline": lambda limit=None: pipeline_loop(pipe, video, limit),
                 "ferfuse-pipeline, demo's detector settings":
                     lambda limit=None: pipeline_loop(demo_pipe, video, limit)}
        warmup = {name: timed(lambda: loop(warmup_frames))[1] for name, loop in loops.items()}
        seconds, found = {name: [] for name in loops}, {}
        for _ in range(rounds):
            for name, loop in loops.items():
                found[name], elapsed = timed(loop)  # the same faces every round: same frames, same model
                seconds[name].append(elapsed)
    base = found[DEMO]
    results = {}
    for name in loops:
        n = len(found[name])
        per_round = [n / t / (len(base) / b) for t, b in zip(seconds[name], seconds[DEMO])]
        matched, same = label_agreement(base, found[name])
        results[name] = {"faces": n, "seconds": statistics.median(seconds[name]), "seconds_per_round": seconds[name],
                         "faces_per_s": n / statistics.median(seconds[name]),
                         "frames_per_s": frames / statistics.median(seconds[name]), "warmup_s": warmup[name],
                         "speedup_faces_per_s": statistics.median(per_round), "speedup_per_round": per_round,
                         "matched_to_demo": matched, "same_label_as_demo": same}
    return {"device_name": device_name("cpu"), "torch": torch.__version__, "opencv": cv2.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "frames": frames,
            "side": side, "rounds": rounds, "build_s": build_s, "results": results}


def table(report: dict) -> str:
    lines = [f"{report['frames']} frames of {report['side']}×{report['side']}, 4 faces each, "
             f"{report['rounds']} rounds; "
             f"{report['device_name']}; faces/s of the median round, speed-up the median of the rounds' ratios",
             f"{'loop':<46} {'faces':>6} {'faces/s':>8} {'speed-up':>9} {'per round':>20} {'first frames s':>15} "
             f"{'same label':>11}"]
    for name, r in report["results"].items():
        lines.append(f"{name:<46} {r['faces']:>6} {r['faces_per_s']:>8.1f} {r['speedup_faces_per_s']:>8.2f}x "
                     f"{' '.join(f'{x:.2f}' for x in r['speedup_per_round']):>20} {r['warmup_s']:>15.2f} "
                     f"{r['same_label_as_demo']:>5}/{r['matched_to_demo']:<5}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--side", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    report = run(args.frames, args.side, rounds=args.rounds)
    publish(report, table(report), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
