"""The face pipeline end to end on a video, against DAN's demo loop: faces/s, same frames.

    python -m ferfuse.bench.pipeline --frames 40 --json bench/results/cpu-avx2-pipeline.json
    python -m pytest bench/test_pipeline.py --benchmark-enable

As a test (benchmarks disabled) it runs each loop once on 3 frames and checks that the
pipeline's labels equal the demo loop's on the faces both found, before any timing."""
import copy

import pytest
import torch

from ferfuse import models
from ferfuse.bench.photographs import write_video
from ferfuse.bench.pipeline import demo_loop, label_agreement, pipeline_loop
from ferfuse.pipeline import FacePipeline


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    eager = models.randomize_batchnorm(models.dan(), seed=0).eval()
    video = write_video(str(tmp_path_factory.mktemp("video") / "faces.avi"), frames=3, side=1024, pan=3)
    pipe = FacePipeline(copy.deepcopy(eager), batch_size=4)
    return eager, pipe, video, demo_loop(eager, video)


@pytest.mark.parametrize("loop", ["dan-demo-loop", "ferfuse-pipeline"])
def test_pipeline_faces_per_second(benchmark, setup, loop):
    eager, pipe, video, reference = setup
    run = (lambda: demo_loop(eager, video)) if loop == "dan-demo-loop" else (lambda: pipeline_loop(pipe, video))
    faces = run()
    matched, same = label_agreement(reference, faces)
    assert len(faces) >= 12 and matched >= 12 and same == matched, (len(faces), matched, same)
    benchmark.extra_info.update(loop=loop, faces=len(faces))
    benchmark.pedantic(run, rounds=3, iterations=1)
