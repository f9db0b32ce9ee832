"""The pipeline's verbs of the `ferfuse` command: predict, evaluate, explain."""
import sys
import time

import torch


def load_model(name: str, checkpoint: str | None, quiet: bool = False):
    """A ferfuse network from a local checkpoint, or seeded random weights (said on stderr)."""
    from ferfuse import models

    if checkpoint:
        return type(models.get(name)).from_checkpoint(checkpoint).eval()
    if not quiet:
        warn_random_weights(name)
    torch.manual_seed(0)
    return models.randomize_batchnorm(models.get(name)).eval()


def warn_random_weights(name: str):
    print(f"no --checkpoint: {name} has seeded random weights, so its labels mean nothing", file=sys.stderr)


def add_model_arguments(p):
    p.add_argument("--model", default="dan", help="network: dan, maca_net, mhan, hafem")
    p.add_argument("--checkpoint", default=None, help="a local checkpoint (upstream formats load as they are)")
    p.add_argument("--labels", default=None,
                   help="label order: rafdb, affectnet7, affectnet8, ferplus, fer2013 or comma-separated names "
                        "(default: rafdb for 7 classes, affectnet8 for 8)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="default: cpu (with --engine ray: cuda when the cluster has GPUs)")
    p.add_argument("--batch-size", type=int, default=None, help="faces per model call (default: 8 on CPU, 64 on CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def pipeline_of(args, detector):
    from .predict import FacePipeline

    model = load_model(args.model, args.checkpoint, args.quiet)
    return FacePipeline(model, detector=detector, device=args.device or "cpu", batch_size=args.batch_size,
                        labels=args.labels)


def progress(quiet: bool, unit: str):
    from tqdm import tqdm

    return tqdm(unit=unit, disable=quiet or not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True)


def predict(args) -> int:
    from . import sources
    from .output import Annotator, RecordWriter
    from .sources import Failure

    if args.engine == "ray":
        return predict_on_ray(args)
    if args.output_dir or args.address or args.workers:
        print("ferfuse predict: --output-dir, --address and --workers are for --engine ray", file=sys.stderr)
        return 2
    pipe = pipeline_of(args, "haar")
    inputs, skipped = sources.expand(args.inputs)
    writer = RecordWriter(args.output, pipe.labels)
    annotator = Annotator(args.annotate, args.every) if args.annotate else None
    failed, frames, faces = {}, 0, 0
    bar = progress(args.quiet, "frame")
    t0 = time.perf_counter()
    try:
        for result in pipe.results(inputs, every=args.every, keep_images=annotator is not None):
            if isinstance(result, Failure):
                failed[result.source] = result.message
                print(f"ferfuse predict: {result.source}: {result.message}", file=sys.stderr)
                writer.write(result.record())
                continue
            for record in result.records():
                writer.write(record)
            if annotator:
                annotator.add(result)
            frames += 1
            faces += len(result.faces)
            bar.update()
            bar.set_postfix(faces=faces, faces_per_s=f"{faces / (time.perf_counter() - t0):.1f}")
    finally:
        bar.close()
        writer.close()
        if annotator:
            annotator.close()
    seconds = time.perf_counter() - t0
    if not args.quiet:
        print(f"{len(inputs)} inputs, {frames} frames or images, {faces} faces in {seconds:.1f} s "
              f"({faces / seconds if seconds else 0:.1f} faces/s); labels: {', '.join(pipe.labels)}; "
              f"{len(failed)} failed" + (f"; {len(skipped)} files in folders skipped (not images or videos)"
                                         if skipped else ""), file=sys.stderr)
    return 1 if failed else 0


def predict_on_ray(args) -> int:
    """`predict --engine ray`: the same rows, from Ray Data on the cluster at --address (or the
    one RAY_ADDRESS names, or a local one)."""
    try:
        from . import ray as engine  # its ImportError says how to install Ray
    except ImportError as e:
        print(f"ferfuse predict --engine ray: {e}", file=sys.stderr)
        return 2
    if args.annotate:
        print("ferfuse predict: --annotate runs with the local engine only", file=sys.stderr)
        return 2
    if not engine.ray.is_initialized():
        engine.ray.init(address=args.address)
    if not args.checkpoint and not args.quiet:
        warn_random_weights(args.model)
    t0 = time.perf_counter()
    try:
        ds, labels = engine.predict_dataset(args.inputs, model=args.model, checkpoint=args.checkpoint,
                                            labels=args.labels, every=args.every, workers=args.workers,
                                            cpus_per_worker=args.cpus_per_worker, device=args.device,
                                            batch_size=args.batch_size)
    except ValueError as e:
        print(f"ferfuse predict --engine ray: {e}", file=sys.stderr)
        return 2
    counts = engine.write(ds, labels, output=None if args.output_dir else args.output, output_dir=args.output_dir,
                          format=args.format)
    for source, message in counts["failed"].items():
        print(f"ferfuse predict: {source}: {message}", file=sys.stderr)
    seconds = time.perf_counter() - t0
    if not args.quiet:
        print(f"Ray: {counts['rows']} rows, {counts['faces']} faces in {seconds:.1f} s "
              f"({counts['faces'] / seconds if seconds else 0:.1f} faces/s); labels: {', '.join(labels)}; "
              f"{len(counts['failed'])} failed", file=sys.stderr)
    return 1 if counts["failed"] else 0


def add_parsers(sub):
    p = sub.add_parser("predict", help="faces in images, folders, videos or cameras → label and scores per face")
    p.add_argument("inputs", nargs="+", help="image files, folders (recursive), video files, camera:N")
    add_model_arguments(p)
    p.add_argument("--output", default=None, help="results.jsonl or results.csv (default: JSON lines on stdout)")
    p.add_argument("--annotate", default=None, metavar="DIR", help="write annotated images and videos here")
    p.add_argument("--every", type=int, default=1, help="every N-th video frame")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="ray: Ray Data on a cluster (pip install 'ferfuse[ray]')")
    p.add_argument("--address", default=None, help="Ray: the cluster's address (default: RAY_ADDRESS, else local)")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray: prediction actors (default: one per GPU, else one per two CPUs)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="Ray: CPUs each prediction actor reserves")
    p.add_argument("--output-dir", default=None, metavar="DIR",
                   help="Ray: the workers write their rows here, one file per block (instead of --output)")
    p.add_argument("--format", default="parquet", choices=["parquet", "jsonl"], help="Ray: --output-dir's format")
    p.set_defaults(func=predict)

    p = sub.add_parser("evaluate", help="accuracy on a labelled set, and agreement with the original model")
    p.add_argument("root", help="an ImageFolder (sub-folders named by label), the root of --list's paths, or "
                                "FER2013's CSV (fer2013.csv)")
    p.add_argument("--list", default=None, help="'path label' lines (RAF-DB's list_patition_label.txt style)")
    p.add_argument("--usage", default=None,
                   help="FER2013's CSV: the rows of this Usage (default PrivateTest, the test split; 'all')")
    p.add_argument("--ferplus", default=None, metavar="CSV",
                   help="FER2013's CSV: label its rows by FERPlus's majority vote (fer2013new.csv)")
    p.add_argument("--detect", action="store_true", help="find the face in each image (else: aligned crops)")
    add_model_arguments(p)
    p.add_argument("--plot", default=None, metavar="PNG", help="write the confusion matrix here")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no-compare", action="store_true", help="skip the original model's run on the same faces")
    p.set_defaults(func=evaluate)

    p = sub.add_parser("explain", help="attention heat-maps per head over each face of an image")
    p.add_argument("image")
    add_model_arguments(p)
    p.add_argument("--out", required=True, help="PNG to write")
    p.set_defaults(func=explain)


def evaluate(args) -> int:
    from .evaluate import evaluate as run, plot_confusion

    model = load_model(args.model, args.checkpoint, args.quiet)
    try:
        result = run(model, args.root, list_file=args.list, detect=args.detect, labels=args.labels,
                     batch_size=args.batch_size, device=args.device or "cpu", compare=not args.no_compare,
                     usage=args.usage, ferplus=args.ferplus)
    except (ValueError, OSError) as e:  # a set that cannot be read as labelled: what is wrong, no traceback
        print(f"ferfuse evaluate: {e}", file=sys.stderr)
        return 2
    if args.plot:
        plot_confusion(result, args.plot)
    print(result.to_json() if args.json else result.table())
    return 1 if result.failed else 0


def explain(args) -> int:
    from .explain import explain as run, render

    pipe = pipeline_of(args, "haar")
    explanations = run(pipe, args.image)
    if not explanations:
        print(f"ferfuse explain: {args.image}: no face found", file=sys.stderr)
        return 1
    render(explanations, args.out, title=f"{args.image}: {args.model}")
    if not args.quiet:
        for e in explanations:
            print(f"face {e.box}: {e.label} ({e.scores[e.label]:.2f}), {len(e.maps)} maps")
        print(f"wrote {args.out}")
    return 0
