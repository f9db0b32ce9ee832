"""The Ray engine on a local cluster (2 CPUs, loopback only): exactly the local engine's rows on a
folder of a few hundred real photographs, and every row exactly once when a prediction actor is
killed in the middle of a run."""
import copy
import json
import os
import signal
import sys

import numpy as np
import pytest
import ray
import torch
from photos import varied_folder, write_video

import ferfuse.pipeline
from ferfuse import models
from ferfuse.cli import main
from ferfuse.engine import report
from ferfuse.pipeline import Failure, FacePipeline
from ferfuse.pipeline.ray import predict_dataset, records


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """200 images (astronaut crops and mirror images, other photographs), a short video of four
    faces a frame, and a corrupt image."""
    root = tmp_path_factory.mktemp("faces")
    varied_folder(root, 200)
    write_video(root / "b" / "clip.avi", frames=3, side=512)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


@pytest.fixture(scope="module")
def dan():
    """DAN with seeded random weights, its output BatchNorm scaled down so that the logits are a few
    units apart (random weights give thousands, and scores of exactly 0 and 1 compare nothing)."""
    torch.manual_seed(0)
    model = models.randomize_batchnorm(models.dan(), seed=0).eval()
    model.bn.weight.data.mul_(2e-4)
    model.bn.bias.data.mul_(2e-4)
    return model


@pytest.fixture(scope="module")
def local(dan, folder):
    """The local engine's records and logits, and the score tolerance between two fp32 runs."""
    pipe = FacePipeline(copy.deepcopy(dan))
    expected, logits = [], []
    for result in pipe.results([str(folder)]):  # as FacePipeline.predict writes them
        if isinstance(result, Failure):
            expected.append(result.record())
        else:
            expected += result.records()
            logits += [face.logits for face in result.faces]
    # each run's logits are within the verified budget of float64 (relative to the largest logit),
    # and softmax moves no score by more than the largest logit change: two runs differ by ≤ 2× that
    tolerance = 2 * report(pipe.model).logits_budget * torch.stack(logits).abs().max().item()
    return expected, tolerance


def assert_same_rows(rows, expected, tolerance):
    assert len(rows) == len(expected)
    worst = 0.0
    for got, want in zip(rows, expected):
        assert {k: v for k, v in got.items() if k != "scores"} == {k: v for k, v in want.items() if k != "scores"}
        if "scores" in want:
            assert got["scores"].keys() == want["scores"].keys()
            worst = max(worst, max(abs(got["scores"][k] - want["scores"][k]) for k in want["scores"]))
    assert worst <= tolerance, (worst, tolerance)


def test_ray_rows_equal_the_local_engine(cluster, dan, folder, local):
    expected, tolerance = local
    faces = [r for r in expected if "box" in r]
    # the folder exercises every kind of row: faces, faceless photographs, video frames, a failure
    assert len(faces) >= 160 and any(r.get("faces") == 0 for r in expected)
    assert sum(r["frame"] is not None for r in faces) == 12 and sum("error" in r for r in expected) == 1
    assert 0.05 < np.median([max(r["scores"].values()) - min(r["scores"].values()) for r in faces]) < 0.999
    ds, labels = predict_dataset([str(folder)], model=dan, workers=1)
    assert_same_rows(list(records(ds.iter_rows(), labels)), expected, tolerance)


def predictor_pids() -> set[int]:
    """The processes of the prediction actors (Ray names them ray::MapWorker(MapBatches(Predictor)))."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"MapBatches(Predictor)" in f.read():
                    pids.add(int(pid))
        except OSError:
            continue
    return pids


def test_killed_actor_loses_and_doubles_no_row(cluster, dan, folder, local):
    expected, tolerance = local
    ds, labels = predict_dataset([str(folder)], model=dan, workers=1, batch_size=4)
    rows, killed, seen = [], None, set()
    for row in ds.iter_rows():
        rows.append(row)
        if len(rows) == 40:  # mid-run: the actor holds batches, most rows are still to come
            (killed,) = predictor_pids()
            os.kill(killed, signal.SIGKILL)
        elif killed and len(rows) % 10 == 0:
            seen |= predictor_pids()
    assert killed and len(rows) == len(expected)
    assert seen - {killed}, "no restarted actor took over"
    keys = [(r["order"], r["seq"]) for r in rows]
    assert len(set(keys)) == len(keys)
    assert_same_rows(list(records(rows, labels)), expected, tolerance)


def test_cli_engine_ray_writes_rows_and_blocks(cluster, folder, tmp_path):
    """`ferfuse predict --engine ray` (on the running cluster): the local engine's JSON lines (one per
    face, the corrupt file's error), exit status 1 for it; --output-dir writes Parquet blocks."""
    images = sorted(str(p) for p in (folder / "a").glob("0*.png"))[:12]
    inputs = images + [str(folder / "a" / "broken.png")]
    assert main(["predict", *inputs, "--engine", "ray", "--output", str(tmp_path / "ray.jsonl"), "--quiet"]) == 1
    rows = [json.loads(line) for line in open(tmp_path / "ray.jsonl")]
    assert [r["source"] for r in rows] == inputs  # one astronaut face per image, in the input order
    assert all(len(r["box"]) == 4 and sum(r["scores"].values()) == pytest.approx(1.0) for r in rows[:-1])
    assert rows[-1].keys() == {"source", "error"}
    out = tmp_path / "blocks"
    assert main(["predict", *inputs, "--engine", "ray", "--output-dir", str(out), "--quiet"]) == 1
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.num_rows == len(rows) and {"label", "score_Happiness", "box", "error"} <= set(table.column_names)


def test_bad_ray_requests_are_refused(cluster, dan, folder):
    with pytest.raises(ValueError, match="leave none"):
        predict_dataset([str(folder)], model=dan, workers=2)
    with pytest.raises(ValueError, match="camera"):
        predict_dataset(["camera:0"], model=dan)
    with pytest.raises(ValueError, match="original model"):
        predict_dataset([str(folder)], model=copy.deepcopy(dan).optimize())


def test_engine_ray_without_ray_says_how_to_install(monkeypatch, capsys, folder):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.delitem(sys.modules, "ferfuse.pipeline.ray")
    monkeypatch.delattr(ferfuse.pipeline, "ray")  # else `from . import ray` finds the imported module
    assert main(["predict", str(folder / "a" / "0000.png"), "--engine", "ray", "--quiet"]) == 2
    assert "pip install 'ferfuse[ray]'" in capsys.readouterr().err
