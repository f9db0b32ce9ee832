"""Images/s of the face pipeline: the local engine against the Ray engine at 1 and 2 prediction
workers, on one machine, same folder.

    python -m ferfuse.bench.ray_scaling --images 200 --json bench/results/cpu-avx2-ray.json

The folder: `images` photographs made from scikit-image's (astronaut crops and mirror images, one in
ten another photograph). DAN with seeded random weights. The local engine runs as `ferfuse predict`
does (its model optimised once, reading and detection in a background thread, the process's
threads). Ray runs on a local cluster of the machine's CPUs: one CPU is left to the read tasks
(reading and detection), the workers share the others (fractions where there are more workers than
CPUs) and each runs as many threads as whole CPUs it holds, at least one. Each Ray run is timed
whole (its actors start and optimise their models inside it); a run on 8 images measures that fixed
cost, and the difference of the two runs over the difference of their images gives the steady rate.
Ray's overhead per image is its steady time per image less the local engine's with as many model
threads as all the workers run together (the local engine's reader thread beside them, as the
workers have the read tasks beside them). Rows are checked equal to the local engine's (same
sources, boxes and labels) before any figure is kept."""
import argparse
import copy
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from ferfuse import models
from ferfuse.pipeline import FacePipeline

from .photographs import varied_folder
from .providers import device_name
from .report import publish


SMALL = 8  # images of the run that measures Ray's fixed cost (one read task)


def same_rows(rows: list[dict], expected: list[dict]) -> bool:
    key = lambda r: (r["source"], r.get("frame"), r.get("box"), r.get("label"), r.get("error"))  # noqa: E731
    return [key(r) for r in rows] == [key(r) for r in expected]


def run(images: int = 200, worker_counts=(1, 2), seed: int = 0) -> dict:
    import ray

    from ferfuse.pipeline.ray import predict_dataset, records

    torch.manual_seed(seed)
    model = models.randomize_batchnorm(models.dan(), seed=seed).eval()
    cpus = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as small:
        varied_folder(Path(tmp), images, seed)
        varied_folder(Path(small), SMALL, seed)
        t0 = time.perf_counter()
        pipe = FacePipeline(copy.deepcopy(model))
        build_s = time.perf_counter() - t0
        list(pipe.predict([tmp]))  # first calls: the executors timed per batch shape
        threads = torch.get_num_threads()
        shares = {w: (cpus - 1) / w for w in worker_counts}  # one CPU left to the read tasks
        worker_threads = {w: max(1, int(share)) for w, share in shares.items()}
        same_compute = {w: min(cpus, w * worker_threads[w]) for w in worker_counts}  # model threads in all
        results, local_s = {}, {}
        for n in sorted({threads, *same_compute.values()}, reverse=True):
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            expected = list(pipe.predict([tmp]))
            local_s[n] = time.perf_counter() - t0
            results[f"local, {n} thread{'s' if n > 1 else ''}"] = {
                "seconds": local_s[n], "images_per_s": images / local_s[n], "model_build_s": build_s, "threads": n}
        torch.set_num_threads(threads)
        ray.init(num_cpus=cpus, include_dashboard=False)
        try:
            for workers in worker_counts:
                def timed(folder):
                    t0 = time.perf_counter()
                    ds, labels = predict_dataset([folder], model=model, workers=workers,
                                                 cpus_per_worker=shares[workers])
                    rows = list(records(ds.iter_rows(), labels))
                    return time.perf_counter() - t0, rows

                small_s, _ = timed(small)
                total, rows = timed(tmp)
                if not same_rows(rows, expected):
                    raise AssertionError(f"Ray with {workers} workers gave other rows than the local engine")
                per_image = (total - small_s) / (images - SMALL)
                results[f"ray, {workers} worker{'s' if workers > 1 else ''}"] = {
                    "seconds": total, "images_per_s": images / total, "small_run_s": small_s,
                    "steady_images_per_s": 1 / per_image, "cpus_per_worker": shares[workers],
                    "threads_per_worker": worker_threads[workers],
                    "overhead_per_image_ms": 1e3 * (per_image - local_s[same_compute[workers]] / images)}
        finally:
            ray.shutdown()
    return {"device_name": device_name("cpu"), "cpus": cpus, "torch": torch.__version__, "ray": ray.__version__,
            "python": platform.python_version(), "images": images, "rows": len(expected), "results": results}


def table(report: dict) -> str:
    lines = [f"{report['images']} images ({report['rows']} rows); {report['device_name']}, {report['cpus']} CPUs, "
             f"Ray {report['ray']}",
             f"{'engine':<18} {'images/s':>9} {'seconds':>8} {f'{SMALL}-image run s':>16} {'steady images/s':>16} "
             f"{'overhead ms/image':>18}"]
    for name, r in report["results"].items():
        lines.append(f"{name:<18} {r['images_per_s']:>9.1f} {r['seconds']:>8.1f} {r.get('small_run_s', 0):>16.1f} "
                     f"{r.get('steady_images_per_s', r['images_per_s']):>16.1f} "
                     f"{r.get('overhead_per_image_ms', 0):>18.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    report = run(args.images, args.workers)
    publish(report, table(report), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
